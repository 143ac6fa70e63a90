"""Real single-host test cluster (sshd + Slurm + accounting) for braas-hpc; see README.md."""
