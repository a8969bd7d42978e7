"""Submit one workflow step through submitit (slurm, local or debug), wait for it, and record the job.

Every heavy Snakemake rule calls `python -m workflow.launcher run ... -- CMD ...`. The launcher
- picks the executor (`auto`: slurm when `srun` is on PATH and a controller answers, else local; or
  `slurm`, `local`, `debug`),
- writes `<log-dir>/job.json` with the job id *before* waiting, so a rerun after the driver died re-attaches
  to the still-running job instead of submitting a duplicate,
- keeps submitit's folders and logs under `<log-dir>/<jobid>/` (also on success),
- for checkpointable steps (training) answers USR2 (time limit / preemption) by sending SIGTERM to the
  step's process group, waiting for it to save, and requeueing the same command (which resumes),
- for multi-node allocations starts a Ray head on rank 0 and Ray workers on the other ranks,
- optionally runs the HH reward-model server next to the command (evaluation.reward_model.lifecycle): on Slurm
  one per job, on the local executor one per model shared by the steps that hold the same secret (the first starts
  it, the workflow stops it at its end, and it exits after 5 idle minutes in any case),
- gives each launch a secret (env TRE_LAUNCH_TOKEN, generated unless the workflow exported one, never written to
  a file; a local workflow run exports one for all its jobs): the reward server requires it and the reward client
  sends it, the ranks' rendezvous messages carry its HMAC, and the Ray cluster's token is derived from it; the
  rendezvous and Ray records are owner-only,
- exits non-zero with one line naming the job state and its log path when the step fails.

Modules: `cli` (the command line), `cluster` (executor choice, resources -> submitit parameters, Slurm states),
`jobs` (submit or re-attach, wait, job.json), `command` (what the job runs: the step's process group, the reward
server next to it, requeue on USR2), `multinode` (the ranks' rendezvous and Ray), `task` (the submitit task this
process runs in), `tokens` (the launch secret and what derives from it), `progress` (step i/N on the terminal),
`errors`. Rules pass resources that the config schema checked; a resources JSON given by hand is checked against
the same schema entry (workflow.config.check_resources).
"""
