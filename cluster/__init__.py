"""Where `nodd ...` commands run (local torchrun, Slurm, Ray jobs, Kubernetes): job specs,
renderers, launchers, records and sweeps. Standard library and `core` only: never torch, never
`model`; a job runs `nodd` commands, it does not call the other packages' functions."""
