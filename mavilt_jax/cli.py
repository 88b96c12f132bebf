"""Command-line conventions shared by every ``python -m mavilt_jax.*`` entry point.

- ``--help`` prints the module's first docstring paragraph, then one line per flag
  (``--name=DEFAULT  help``); ``--helpfull`` (absl) still lists every library flag.
- A user error (unknown flag, unknown config field or variant, bad value, missing input) ends
  with exit status 2 and ONE line on stderr, ``error: ...``, naming the known alternatives where
  there is a list; never a traceback.

absl entry points use ``app.run(main, flags_parser=cli.absl_flags_parser("workdir", __doc__))``;
argparse ones build their parser with `ArgumentParser`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

HELP_FLAGS = ("-h", "--help", "-?", "--helpshort")


def usage_exit(message: str) -> NoReturn:
    """Ends the program with ``error: message`` (one line) and exit status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _summary(doc: str | None) -> str:
    """The docstring's first paragraph."""
    return (doc or "").strip().split("\n\n")[0].strip()


# ==== absl ========================================================================================

def _absl_flag_line(flag: Any) -> str:
    if hasattr(type(flag), "config_filename"):  # a config file flag (ml_collections.config_flags)
        return f"--{flag.name}=FILE[:VARIANTS]", _one_line(flag.help) + f" Fields: --{flag.name}.FIELD=VALUE."
    if flag.boolean:
        name = f"--[no]{flag.name}"
    else:
        name = f"--{flag.name}" + ("" if flag.default is None else f"={flag.default_as_str.strip(chr(39))}")
    return name, _one_line(flag.help)  # absl puts an enum's values into its help


def absl_help(anchor: str, doc: str | None) -> str:
    """The ``--help`` text of the module that defines flag ``anchor``: its flags, one line each."""
    from absl import flags

    module = flags.FLAGS.find_module_defining_flag(anchor)
    module_flags = sorted(flags.FLAGS.get_flags_for_module(module), key=lambda f: f.name)
    rows = [_absl_flag_line(f) for f in module_flags]
    width = max((len(name) for name, _ in rows), default=0)
    lines = [_summary(doc), "", "flags:"] + [f"  {name.ljust(width)}  {text}" for name, text in rows]
    lines.append("(--helpfull lists the flags of the libraries too.)")
    return "\n".join(lines)


def known_absl_flags(anchor: str) -> list[str]:
    from absl import flags

    module = flags.FLAGS.find_module_defining_flag(anchor)
    return sorted(f"--{f.name}" for f in flags.FLAGS.get_flags_for_module(module))


def _load_config_file(spec: str) -> Any:
    """``path[:variant]`` -> the ConfigDict its ``get_config`` returns (as config_flags loads it)."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_for_help", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_config_field(argv: Sequence[str], flag_name: str = "config") -> str | None:
    """For ``--config.a.b=1`` overrides of fields the config does not have: a message naming the
    first such field and the fields known where it fails; None when every override is known."""
    import ml_collections

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag_name}=")), None)
    if spec is None:
        return None
    try:
        config = _load_config_file(spec)
    except Exception:  # noqa: BLE001 - the config file's own error is reported by the caller
        return None
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{flag_name}\.([^=]+)", arg)
        if not match:
            continue
        node = config
        parts = match.group(1).split(".")
        for i, name in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                where = f"--{flag_name}." + ".".join(parts[:i]) if i else f"--{flag_name}"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                return (f"unknown config field --{flag_name}.{match.group(1)}; "
                        f"known in {where}: {', '.join(known) or '(none: not a group)'}")
            node = node[name]
    return None


def absl_flags_parser(anchor: str, doc: str | None, config_flag: str | None = "config"
                      ) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``absl.app.run``: one-line ``--help``, and bad arguments end with
    one line and exit 2 (unknown flags list the known ones, unknown config fields the known
    fields). ``anchor`` is a flag of the entry point's module; ``config_flag`` its config file
    flag (None: none), which is loaded here so that config-file errors are argument errors."""

    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        if any(a in HELP_FLAGS for a in argv[1:]):
            print(absl_help(anchor, doc))
            sys.exit(0)
        try:
            remaining = flags.FLAGS(argv)
            if config_flag and flags.FLAGS[config_flag].value is not None:
                flags.FLAGS[config_flag].value.keys()
        except flags.UnrecognizedFlagError as e:
            known = ", ".join(known_absl_flags(anchor))
            usage_exit(f"unknown flag --{e.flagname}; known: {known} (--help describes them)")
        except (flags.Error, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            message = config_flag and unknown_config_field(argv, config_flag)
            if not message:
                # Config-file errors arrive with the file's traceback as text: keep its last line.
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                message = lines[-1] if lines else type(e).__name__
            usage_exit(message)
        return remaining

    return parse


# ==== argparse ===================================================================================

class _OneLineFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option on one line: no wrapping of the help text (the description as written)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=10_000, width=10_000)  # help beside the longest flag


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one line per flag in ``--help`` and one-line errors (exit 2) that list the
    known flags; an unknown flag is named before any other problem, and flags are never
    abbreviated (``--chec`` is not ``--checkpoint``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _OneLineFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        parser: ArgumentParser = self
        for word in argv:
            commands = {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                        for name, p in a.choices.items()}
            if word in commands:
                parser = commands[word]  # the flags after a command are the command's
            elif word == "--":
                break
            elif word.startswith("--") and word.split("=", 1)[0] not in parser._option_string_actions:
                parser.error(f"unknown flag {word.split('=', 1)[0]}")
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        known = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
        commands = [name for a in self._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]
        extra = f"; known flags: {', '.join(known)}" if known else ""
        if commands:
            extra += f"; commands: {', '.join(commands)}"
        print(f"{self.prog}: error: {_one_line(message)}{extra}", file=sys.stderr)
        sys.exit(2)
