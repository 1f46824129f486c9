"""
Override a script's module-level config from the command line, nanoGPT-style:

    python train.py config/cpu_ntp.py --batch_size=32 --compile=False

A bare argument is a Python file executed over the defaults; `--key=value` sets one value, parsed as a
Python literal when it is one (else, or where the default is a string, kept as a string); `--key` alone sets
a True/False key to True. Unknown keys and wrong types stop with a one-line message naming the key.
Usage at the top of a script, after its defaults:

    config = configure(globals())
"""
import ast
import os
import sys


class ConfigError(SystemExit):
    pass


def _check(key, value, defaults):
    if key not in defaults:
        close = [k for k in defaults if k.split("_")[0] == key.split("_")[0]] or sorted(defaults)
        raise ConfigError(f"error: unknown config key '{key}' (known keys include: {', '.join(close[:8])})")
    default = defaults[key]
    if default is None or value is None:
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


def configure(namespace, argv=None):
    """Apply config files and --key=value flags in argv to namespace; return the resulting config dict."""
    argv = sys.argv[1:] if argv is None else argv
    keys = [k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))]
    defaults = {k: namespace[k] for k in keys}
    for arg in argv:
        if not arg.startswith("--"):
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
    return {k: namespace[k] for k in keys}
