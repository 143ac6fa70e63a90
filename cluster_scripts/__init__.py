"""Scripts installed on a cluster under <workdir>/braas-hpc-<user>/scripts/<version>/."""
