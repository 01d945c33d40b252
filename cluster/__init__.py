"""Where `nodd ...` commands run (local torchrun, Slurm, Ray jobs, Kubernetes). Standard library
only: never torch, never `model`. Job specs and launchers arrive with the cluster issue."""
