"""Load, merge and validate the workflow config, and turn it into the grid and the step commands the rules run."""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import yaml

from tre.backend.mirror import credentials_error
from tre.backend.rundir import run_path
from tre.grid import METHODS, SIZES, TASKS, TRE_METHODS

CONFIG_DIR = Path(__file__).resolve().parent / "config"
GRIDS = ("tiny", "paper")
STEPS = ("rm_train", "train", "eval")
# Paths the workflow itself makes: a model path under these prefixes is a rule input, anything else (a hub id,
# a model the user placed elsewhere) is taken as given.
MADE_MODEL_PREFIXES = ("models/tiny/", "models/rm/")
WARM_START_MODEL = "models/tiny/warm"  # as a policy: each task's own warm start, models/tiny/warm/<task>
WARM_START_SETTINGS = ("steps", "lr", "batch_size", "seed", "plain_fraction")


class ConfigError(ValueError):
    """The config is invalid; the message is one line naming the key."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def method_table() -> dict[str, dict[str, Any]]:
    """name -> the fields of every registered method (tre.grid), as JSON values."""
    return {name: _jsonable({f.name: getattr(m, f.name) for f in dataclasses.fields(m)}) for name, m in METHODS.items()}


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from path."""
    with open(path) as f:
        # libyaml's loader where PyYAML has it: the schema and a grid file are read at every `snakemake -n`
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping")
    return data


def load_schema(config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """schema.yaml with the grid's names filled in from their owners: tasks, sizes, methods (tre.grid), the artefacts
    (figures), the profiles (tre.backend), the grids (GRIDS), the launcher's clusters and the lm-eval tasks."""
    from evaluation.evaluate import LM_EVAL_TASKS
    from figures import ARTEFACTS
    from tre.backend.mirror import MODES as WANDB_MODES
    from tre.backend.profiles import PROFILES
    from workflow.launcher.cluster import CLUSTERS

    schema = load_yaml(config_dir / "schema.yaml")
    defs, props = schema["$defs"], schema["properties"]

    def each(names: Sequence[str], definition: str) -> dict[str, Any]:
        return {name: {"$ref": f"#/$defs/{definition}"} for name in names}

    props["grid"]["enum"] = list(GRIDS)
    props["profile"]["enum"] = list(PROFILES)
    props["tasks"]["items"]["enum"] = list(TASKS)
    props["sizes"]["items"]["enum"] = list(SIZES)
    props["methods"]["items"]["enum"] = list(METHODS)
    props["figures"]["items"]["enum"] = list(ARTEFACTS)
    props["launcher"]["properties"]["cluster"]["enum"] = list(CLUSTERS)
    props["wandb"]["properties"]["mode"]["enum"] = list(WANDB_MODES)
    props["eval"]["properties"]["lm_eval_task"]["enum"] = list(LM_EVAL_TASKS)
    figure1 = props["figure1"]["properties"]
    figure1["task"]["enum"], figure1["size"]["enum"] = list(TASKS), [*SIZES, None]
    figure1["tre_method"]["enum"] = list(TRE_METHODS)
    props["data"]["properties"] = each(TASKS, "data_spec")
    props["warm_start"]["properties"]["tasks"]["properties"] = each(TASKS, "warm_start_settings")
    props["train"]["properties"]["task_overrides"]["properties"] = each(TASKS, "override_list")
    props["models"]["properties"] = each(SIZES, "model_spec")
    defs["per_size_resources"]["properties"] = each(SIZES, "resources")
    return schema


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """base updated by over, recursively for mappings (lists and scalars replace)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _path_str(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _schema_error(instance: Any, schema: Mapping[str, Any]) -> Optional[tuple[list[Any], str]]:
    """(path, what is wrong) of the first violation of the JSON schema in instance, or None."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return None
    err = errors[0]
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted((err.schema.get("properties") or {}).keys())
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, Mapping) else []
        return ([*path, extra[0]] if extra else path), f"unknown key (allowed: {', '.join(allowed)})"
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return [*path, missing[0]], "required key missing"
    if err.validator == "enum":
        return path, f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    return path, err.message


def validate(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Check config against the JSON schema and the method registry (and that wandb online has its key in the
    environment); raise ConfigError (one line) if it is bad."""
    bad = _schema_error(config, schema)
    if bad:
        raise ConfigError(f"config: {_path_str(bad[0])}: {bad[1]}")
    _check_semantics(config)


# data.countdown keys for `prepare countdown --generate` (the CPU miniature's task), spelled as its options
COUNTDOWN_GENERATOR_KEYS = ("numbers", "max_number", "min_target", "max_target", "ops", "train_from_test")


def _check_semantics(config: Mapping[str, Any]) -> None:
    for m in config["train"].get("method_overrides", {}):
        if m not in METHODS:
            raise ConfigError(f"config: train.method_overrides.{m}: not a method (one of {', '.join(METHODS)})")
    for t in config["tasks"]:
        if t not in config["data"]:
            raise ConfigError(f"config: data.{t}: required for task {t!r}")
    for t, spec in config["data"].items():
        if spec.get("max_operand") is not None and not (t == "math" and spec.get("generate")):
            raise ConfigError(f"config: data.{t}.max_operand: only for math with generate: true")
        for key in COUNTDOWN_GENERATOR_KEYS:
            if spec.get(key) is not None and spec.get(key) is not False and not (t == "countdown" and spec.get("generate")):
                raise ConfigError(f"config: data.{t}.{key}: only for countdown with generate: true")
    for s in config["sizes"]:
        if s not in config["models"]:
            raise ConfigError(f"config: models.{s}: required for size {s!r}")
    if "figure1" in config["figures"] and not config.get("archive_only", False):
        f1 = figure1_run(config)
        for m in ("entropy", f1["tre_method"]):
            if m not in config["methods"]:
                raise ConfigError(f"config: figures: figure1 compares the entropy and {f1['tre_method']} runs; "
                                  f"add {m!r} to methods or drop figure1")
        for key, pool in (("task", "tasks"), ("size", "sizes"), ("seed", "seeds")):
            if f1[key] not in config[pool]:
                raise ConfigError(f"config: figure1.{key}: {f1[key]!r} is not in {pool} {config[pool]}")
    if _policy_is_warm_start(config) and not config.get("warm_start"):
        raise ConfigError(f"config: warm_start: required when a policy is {WARM_START_MODEL} (or point "
                          "models.<size>.policy at models/tiny/policy)")
    for task in (config.get("warm_start") or {}).get("tasks", {}):
        if not TASKS[task].demonstrations:
            raise ConfigError(f"config: warm_start.tasks.{task}: task {task} has no demonstrations to warm-start "
                              f"from; tasks with them: {', '.join(t for t, v in TASKS.items() if v.demonstrations)}")
    wandb_mode = (config.get("wandb") or {}).get("mode", "disabled")
    missing_key = None if config.get("archive_only", False) else credentials_error(wandb_mode)
    if missing_key:  # before any job is submitted
        raise ConfigError(f"config: wandb.mode: {missing_key}")
    if config["profile"] == "tiny" and any(s != "tiny" for s in config["sizes"]):
        bad = next(s for s in config["sizes"] if s != "tiny")
        raise ConfigError(f"config: sizes: {bad!r} needs profile 'paper' (profile 'tiny' runs size 'tiny' only)")


# ------------------------------------------------------------------------------------ --config values

_JSON_TYPES: dict[str, Any] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, Mapping),
}


def _subschema(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """schema with its local $ref ("#/$defs/...") followed."""
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema if isinstance(schema, Mapping) else {}


def _scalar_from_text(text: str, types: Sequence[str]) -> Any:
    """text read as a YAML scalar when that gives one of `types` (and a float like 2e-4 for number), else text."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    if isinstance(parsed, str) and "number" in types:
        try:
            parsed = float(text)  # YAML 1.1 reads 2e-4 (no dot) as a string
        except ValueError:
            pass
    return parsed if any(_JSON_TYPES[t](parsed) for t in types if t in _JSON_TYPES) else text


def coerce(value: Any, schema: Mapping[str, Any], root: Optional[Mapping[str, Any]] = None) -> Any:
    """value with every string that the schema types as number, integer, boolean or null read as YAML.

    Snakemake reads `--config key=VALUE` with YAML's BaseLoader, so inside lists and mappings every scalar arrives
    as a string ('seeds=[0,1]' gives ['0', '1']) and a lone `true` stays 'true'; this gives them the types a
    --configfile would. A string that reads as none of the allowed types is left for validation to name."""
    root = schema if root is None else root
    schema = _subschema(schema, root)
    if isinstance(value, Mapping):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {k: coerce(v, props[k] if k in props else (extra if isinstance(extra, Mapping) else {}), root)
                for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [coerce(v, items if isinstance(items, Mapping) else {}, root) for v in value]
    if isinstance(value, str):
        types = schema.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if types and types != ["string"]:
            return _scalar_from_text(value, types)
    return value


def resolve(user: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The effective config: the grid's base file (tiny unless user sets grid) updated by the user's keys.

    The user's values are first read against the schema (`coerce`), so `--config` strings get the schema's types."""
    schema = load_schema(config_dir)
    user = coerce(user, schema)
    grid = user.get("grid", "tiny")
    if grid not in GRIDS:
        raise ConfigError(f"config: grid: {grid!r} is not one of {', '.join(GRIDS)}")
    config = deep_merge(load_yaml(config_dir / f"{grid}.yaml"), user)
    validate(config, schema)
    return config


def load_or_exit(user: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """resolve(), but a bad config prints its one line and exits with status 2 (no traceback)."""
    try:
        return resolve(user, config_dir)
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Run:
    """One PPO run of the grid."""

    task: str
    size: str
    method: str
    seed: int

    @property
    def run_dir(self) -> str:
        """runs/<task>/<size>/<method>/seed<k> (the shared run-directory contract)."""
        return f"runs/{self.wildcards}"

    @property
    def wildcards(self) -> str:
        """The same path below logs/<rule>/."""
        return run_path(self.task, self.size, self.method, self.seed)


def runs(config: Mapping[str, Any]) -> Iterator[Run]:
    """Every run of the grid, in task, size, method, seed order."""
    for task in config["tasks"]:
        for size in config["sizes"]:
            for method in config["methods"]:
                for seed in config["seeds"]:
                    yield Run(task, size, method, int(seed))


def figure1_run(config: Mapping[str, Any]) -> dict[str, Any]:
    """Task, size, seed and TRE method whose checkpoints Figure 1 compares (nulls: the grid's first), and where."""
    f1 = dict(config.get("figure1") or {})
    return {"task": f1.get("task", "countdown"),
            "size": f1.get("size") if f1.get("size") is not None else config["sizes"][0],
            "seed": f1.get("seed") if f1.get("seed") is not None else config["seeds"][0],
            "tre_method": f1.get("tre_method", "tre_p"),
            "prompt_index": f1.get("prompt_index", 0),
            "response_prefix": f1.get("response_prefix", "")}


def artefact_outputs(name: str) -> list[str]:
    """The files `python -m figures NAME` writes: tables under results/tables, figures under results/figures."""
    if name.startswith("table"):
        return [f"results/tables/{name}.{ext}" for ext in ("csv", "md", "tex")]
    return [f"results/figures/{name}.{ext}" for ext in ("pdf", "png")]


def warm_start_tasks(config: Mapping[str, Any]) -> list[str]:
    """The grid's tasks that get a warm start of their own (those with demonstrations, when a policy asks for it)."""
    if not config.get("warm_start") or not _policy_is_warm_start(config):
        return []
    return [t for t in config["tasks"] if TASKS[t].demonstrations]


def _policy_is_warm_start(config: Mapping[str, Any]) -> bool:
    """Whether some size's policy is models/tiny/warm (each task's warm start)."""
    return any(config["models"][s]["policy"] == WARM_START_MODEL for s in config["sizes"])


def warm_start_model(task: str) -> str:
    """The directory of one task's warm start (Snakemake passes "{task}" for its output pattern)."""
    return f"{WARM_START_MODEL}/{task}"


def warm_start_settings(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The warm start of one task: the shared settings, then the task's own (warm_start.tasks.<task>)."""
    spec = config["warm_start"]
    settings = {"base": spec["base"], **{k: spec[k] for k in WARM_START_SETTINGS if spec.get(k) is not None}}
    settings.update(spec.get("tasks", {}).get(task, {}))
    return settings


def warm_start_args(config: Mapping[str, Any], task: str, threads: int) -> list[str]:
    """Arguments of `python -m miniature.warm_start` for one task's warm start (its train rows only)."""
    settings = warm_start_settings(config, task)
    args = ["--model", settings["base"], "--data", f"data/{task}/train.parquet", "--out", warm_start_model(task),
            "--threads", str(threads)]
    for key in WARM_START_SETTINGS:
        if settings.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(settings[key])]
    return args


def policy_path(config: Mapping[str, Any], run: Run) -> Optional[str]:
    """The policy a run starts from: models.<size>.policy, where models/tiny/warm means the run's task's warm start
    (a task without demonstrations starts from the warm start's base)."""
    policy = config["models"][run.size]["policy"]
    if policy != WARM_START_MODEL:
        return policy
    return warm_start_model(run.task) if run.task in warm_start_tasks(config) else config["warm_start"]["base"]


def is_made_path(path: Optional[str]) -> bool:
    """Whether a model path is produced by this workflow (so it is a rule input)."""
    return bool(path) and str(path).startswith(MADE_MODEL_PREFIXES)


# ----------------------------------------------------------------------------------------- resources


def step_resources(config: Mapping[str, Any], step: str, size: str) -> dict[str, Any]:
    """Resources of one step at one size: default, then launcher partition/account, then the step's own entry."""
    if step not in STEPS:
        raise ConfigError(f"step: {step!r} is not one of {', '.join(STEPS)}")
    res = dict(config["resources"]["default"])
    for key in ("partition", "account"):
        if config["launcher"].get(key) is not None:
            res[key] = config["launcher"][key]
    res.update(config["resources"].get(step, {}).get(size, {}))
    return res


def check_resources(resources: Any) -> None:
    """Check one step's resources against the schema's resources entry; raise ConfigError (one line) if bad."""
    schema = load_yaml(CONFIG_DIR / "schema.yaml")  # as written: the resources entry has no derived enums
    bad = _schema_error(resources, {"$defs": schema["$defs"], "$ref": "#/$defs/resources"})
    if bad:
        raise ConfigError(f"{_path_str(['resources', *bad[0]])}: {bad[1]}")


# ------------------------------------------------------------------------------------------ commands


def method_spec(config: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """What makes a run what it is (Snakemake reruns it when this changes): method fields and overrides."""
    return {
        "method_spec": method_table()[run.method],
        "profile": config["profile"],
        "model": policy_path(config, run),
        "overrides": train_overrides(config, run),
    }


def train_overrides(config: Mapping[str, Any], run: Run) -> list[str]:
    """key=value overrides passed to the backend for this run (global, per task, per method, then multi-node)."""
    out = list(config["train"].get("overrides", []))
    out += list(config["train"].get("task_overrides", {}).get(run.task, []))
    out += list(config["train"].get("method_overrides", {}).get(run.method, []))
    res = step_resources(config, "train", run.size)
    if res.get("nodes", 1) > 1:
        out += [f"trainer.nnodes={res['nodes']}", f"trainer.n_gpus_per_node={res.get('gpus_per_node', 0)}"]
    return out


def data_args(config: Mapping[str, Any], task: str) -> list[str]:
    """Arguments of `python -m evaluation.tasks prepare TASK --out data/TASK ...`."""
    spec = config["data"][task]
    args = ["prepare", task, "--out", f"data/{task}"]
    if spec.get("generate"):
        args.append("--generate")
    if spec.get("source"):
        args += ["--source", spec["source"]]
    for key in ("train_size", "test_size", "seed", "max_operand", *COUNTDOWN_GENERATOR_KEYS):
        value = spec.get(key)
        if value is True:
            args.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def rm_train_args(config: Mapping[str, Any], size: str) -> list[str]:
    """Arguments of `python -m evaluation.reward_model train ...` for the RM of one size."""
    rm = config["reward_model"]
    args = ["train", "--base", config["models"][size]["reward_base"], "--data", rm["data"],
            "--out", f"models/rm/{size}", "--preset", size]
    for key in ("max_steps", "limit"):
        if rm.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(rm[key])]
    return args


def train_args(config: Mapping[str, Any], run: Run) -> list[str]:
    """Arguments of `python -m tre.backend train ...` for one run."""
    args = ["train", "--task", run.task, "--size", run.size, "--method", run.method, "--seed", str(run.seed),
            "--profile", config["profile"], "--run-dir", run.run_dir, "--data-dir", f"data/{run.task}"]
    policy = policy_path(config, run)
    if policy:
        args += ["--model-path", policy]
    return args + wandb_args(config) + train_overrides(config, run)


def wandb_args(config: Mapping[str, Any]) -> list[str]:
    """The --wandb options of the training and evaluation commands ([] while the mirror is disabled).

    Not part of what a result depends on (method_spec, the evaluate rule's params): turning the mirror on reruns
    nothing."""
    spec = config.get("wandb") or {}
    if spec.get("mode", "disabled") == "disabled":
        return []
    args = ["--wandb", spec["mode"]]
    for key in ("project", "entity", "group"):
        if spec.get(key) is not None:
            args += [f"--wandb-{key}", str(spec[key])]
    return args


def eval_args(config: Mapping[str, Any], run: Run) -> list[str]:
    """Arguments of `python -m evaluation evaluate RUN_DIR ...` for one run."""
    args = ["evaluate", run.run_dir, "--n", str(config["eval"]["n"])]
    if config["eval"].get("step") is not None:
        args += ["--step", str(config["eval"]["step"])]
    if config["eval"].get("lm_eval") is not None:
        args.append("--lm-eval" if config["eval"]["lm_eval"] else "--no-lm-eval")
    for key in ("lm_eval_task", "lm_eval_python", "lm_eval_data"):
        if config["eval"].get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(config["eval"][key])]
    return args


def launcher_cmd(python: str, *, name: str, log_dir: str, config: Mapping[str, Any], resources: Mapping[str, Any],
                 argv: Sequence[str], checkpointable: bool = False, reward_model: Optional[str] = None,
                 ray: bool = False, record: Optional[str] = None, supersede: Optional[tuple[str, str]] = None,
                 term_grace_s: Optional[float] = None) -> str:
    """The shell command of a rule that runs argv through the launcher."""
    cmd = [python, "-m", "workflow.launcher", "run", "--name", name, "--log-dir", log_dir,
           "--cluster", config["launcher"]["cluster"], "--resources", json.dumps(dict(resources), sort_keys=True)]
    if checkpointable:
        cmd.append("--checkpointable")
    if reward_model:
        cmd += ["--reward-model", reward_model]
    if ray:
        cmd.append("--ray")
    if record:
        cmd += ["--record", record]
    if supersede:
        cmd += ["--supersede", supersede[0], supersede[1]]
    if term_grace_s is not None:
        cmd += ["--term-grace-s", str(term_grace_s)]
    return shlex.join([*cmd, "--", *argv])
