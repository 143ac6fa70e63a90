"""Scripts installed on a cluster under <workdir>/braas-hpc/scripts/<version>/."""
