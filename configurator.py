"""
Every script's command line, nanoGPT-style: module-level defaults, overridden by config files and flags.

    python train.py config/concepts_ntp.py --batch_size=32 --compile=False
    python train.py --help

A bare argument ending in .py is a Python file executed over the defaults; `--key=value` sets one value,
parsed as a Python literal when it is one (else, or where the default is a string, kept as a string);
`--key` alone sets a True/False key to True. A script that takes paths (eval.py, compare.py) names a key that
collects its other bare arguments. Unknown keys and wrong types stop with a one-line message naming the key.
`--help` prints the script's docstring and every key with its default and comment. At the top of a script,
after its defaults:

    config = configure(globals())

Also here: what a script then does with its settings: range checks (check), the one place that turns
device="auto" and dtype="auto" into what the machine has, and restoring a resumed run's settings (resume_settings).
"""
import ast
import os
import re
import sys
from contextlib import nullcontext


class ConfigError(SystemExit):
    pass


def _check(key, value, defaults):
    if key not in defaults:
        close = [k for k in defaults if k.split("_")[0] == key.split("_")[0]] or sorted(defaults)
        raise ConfigError(f"error: unknown config key '{key}' (known keys include: {', '.join(close[:8])}; "
                          "--help lists them all)")
    default = defaults[key]
    if default is None:  # a key whose default is None takes anything; None itself only such a key
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # --lr=1 means 1.0
    if type(value) is not type(default):
        raise ConfigError(f"error: config key '{key}' expects {type(default).__name__} (like {default!r}), "
                          f"got {type(value).__name__} {value!r}")
    return value


def _parse(text):
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text  # a bare string, e.g. --dataset=concepts


def usage(namespace, keys):
    """The --help text: the script's docstring, then one line per key with its default and its comment."""
    comments = {}
    path = namespace.get("__file__")
    if path and os.path.exists(path):
        for line in open(path):
            m = re.match(r"(\w+) = .*?(?:#\s*(.*))?$", line.rstrip())
            if m and m.group(1) in keys:
                comments.setdefault(m.group(1), m.group(2) or "")
    width = max((len(k) + len(repr(namespace[k])) for k in keys), default=0) + 4
    lines = [(namespace.get("__doc__") or "").strip(), "", "config keys (--key=value; config files: CONFIG.py):"]
    lines += [f"  --{f'{k}={namespace[k]!r}':<{width}} {comments.get(k, '')}".rstrip() for k in keys]
    return "\n".join(lines)


def configure(namespace, argv=None, positional=None):
    """Apply config files and --key=value flags in argv to namespace; return the resulting config dict.
    positional: the name of a string key that collects the bare arguments which are not .py files,
    comma-joined (eval.py's runs); without it such an argument is an error. --help prints usage() and exits."""
    argv = sys.argv[1:] if argv is None else argv
    keys = [k for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))]
    if "--help" in argv or "-h" in argv:
        print(usage(namespace, keys))
        raise SystemExit(0)
    defaults = {k: namespace[k] for k in keys}
    bare = []
    for arg in argv:
        if not arg.startswith("--"):
            if positional and not arg.endswith(".py"):
                bare.append(arg)
                continue
            if not os.path.isfile(arg):
                raise ConfigError(f"error: config file '{arg}' not found (see config/ for the presets)")
            file_ns = {}
            exec(compile(open(arg).read(), arg, "exec"), file_ns)
            for k, v in file_ns.items():
                if not k.startswith("_") and not callable(v) and not isinstance(v, type(sys)):
                    namespace[k] = _check(k, v, defaults)
        else:
            key, eq, text = arg[2:].partition("=")
            if not eq and not isinstance(defaults.get(key), bool):
                raise ConfigError(f"error: expected --{key}=VALUE, got '{arg}'")
            value = True if not eq else text if isinstance(defaults.get(key), str) else _parse(text)
            namespace[key] = _check(key, value, defaults)
    if bare:
        namespace[positional] = ",".join(bare)
    return {k: namespace[k] for k in keys}


# What a command does to a run rather than what the run is: a resume never takes these from the checkpoint
COMMAND_KEYS = ("out_dir", "init_from", "overwrite")


def keys_given(argv):
    """The config keys a command line sets: its --key flags and the names its config files assign."""
    keys = set()
    for arg in argv:
        if arg.startswith("--"):
            keys.add(arg[2:].partition("=")[0])
        else:
            tree = ast.parse(open(arg).read())
            keys |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return keys


def resume_settings(config, saved, may_change, fix, argv=None):
    """Restore into config the settings a resumed run was started with (saved), but for COMMAND_KEYS. A key the
    command line sets (argv, default sys.argv[1:]) that contradicts one is an error, unless it is in may_change;
    fix says what to do instead. Returns what the keys in may_change changed, for the log."""
    given, changes = keys_given(sys.argv[1:] if argv is None else argv), []
    for key, value in saved.items():
        if key not in config or key in COMMAND_KEYS or config[key] == value:
            continue
        if key not in given:
            config[key] = value
        elif key in may_change:
            changes.append(f"{key} {value!r} -> {config[key]!r}")
        else:
            raise ConfigError(f"error: {key}={config[key]!r} contradicts the checkpoint's {key}={value!r}: a resumed "
                              f"run keeps its settings (a flag may change only {', '.join(may_change)}); drop it, "
                              f"or {fix}")
    return changes


def _inside(value, interval):
    """Whether value is a number in an interval written as in mathematics: "[0, 1)" is 0 <= value < 1."""
    opening, low, high, closing = re.fullmatch(r"([\[(])(.+), (.+)([\])])", interval).groups()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    above = float(low) <= value if opening == "[" else float(low) < value
    return above and (value <= float(high) if closing == "]" else value < float(high))


def check(config, at_least=(), between=(), one_of=()):
    """Stop with a one-line ConfigError at the first setting out of its range. at_least: {key: lowest value};
    between: {key: interval, like "[0, 1)" or "(0, inf)"}; one_of: {key: allowed values}. A None passes: only a
    key whose default is None can hold it, and there it means unset."""
    at_least = dict(at_least)
    ranges = {**{key: f"[{low}, inf)" for key, low in at_least.items()}, **dict(between)}
    for key, interval in ranges.items():
        if config[key] is not None and not _inside(config[key], interval):
            allowed = f"at least {at_least[key]}" if key in at_least else f"in {interval}"
            raise ConfigError(f"error: {key}={config[key]!r} must be {allowed}")
    for key, choices in dict(one_of).items():
        if config[key] not in choices:
            raise ConfigError(f"error: {key}={config[key]!r} must be {' or '.join(map(repr, choices))}")


def resolve_device(device):
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; any other device name is kept, once torch knows it
    and, for cuda or cuda:N, sees that GPU. Raises ConfigError otherwise."""
    import torch
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if visible else "cpu"
    try:
        kind, index = torch.device(device).type, torch.device(device).index or 0
    except RuntimeError:
        raise ConfigError(f"error: unknown device={device!r}: use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not visible:
        raise ConfigError(f"error: --device={device} but no CUDA device is visible: use --device=cpu")
    if kind == "cuda" and index >= visible:
        raise ConfigError(f"error: --device={device} but only {visible} CUDA devices are visible: use cuda:0 to "
                          f"cuda:{visible - 1}, or --device=cpu")
    return device


def autocast_for(device, dtype):
    """(torch dtype, autocast context) for a device and a dtype name; "auto" is bfloat16 on CUDA, float32
    elsewhere. float32 runs without autocast. Raises ConfigError for an unknown dtype."""
    import torch
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    name = ("bfloat16" if device_type == "cuda" else "float32") if dtype == "auto" else dtype
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"error: unknown dtype={dtype!r}: use auto, float32, bfloat16 or float16")
    ptdtype = dtypes[name]
    return ptdtype, nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
