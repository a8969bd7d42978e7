# Helpers shared by the rules: the grid lookups and how many local cores a launcher rule holds.
from workflow.launcher.progress import PROGRESS_FD_ENV


def run_of(wc):
    """The Run named by a rule's wildcards."""
    return wfc.Run(wc.task, wc.size, wc.method, int(wc.seed))


def launcher_threads(step, size):
    """Cores a launcher rule holds on this machine: the step's CPUs when it runs here, 1 while it only waits."""
    if CLUSTER == "slurm":
        return 1
    return min(wfc.step_resources(config, step, size).get("cpus_per_task", 1), workflow.cores or 1)


def model_inputs(*paths):
    """The model paths this workflow makes itself (rule inputs); hub ids and external paths are not."""
    return [p for p in paths if wfc.is_made_path(p)]


def shell_logged(cmd, log):
    """Run a built command line from a `run:` block with its output to log (braces in it are not placeholders).

    fd 3 stays on Snakemake's terminal: the launcher prints its jobs' progress lines there (PROGRESS_FD_ENV).
    """
    full = f"{PROGRESS_FD_ENV}=3 {cmd} 3>&2 > {shlex.quote(str(log))} 2>&1"
    shell(full.replace("{", "{{").replace("}", "}}"))
