"""Where settings come from, besides the defaults and the command line: the environment and the YAML file.

Both are pydantic-settings sources (:class:`EnvSettingsSource`, :class:`YamlConfigSettingsSource`) with the
gateway's rules on top: what they cannot read is a problem named in the house wording, and a section given
whole by a preset name (``key_format: deployally``) is expanded before the sources are merged, so that a
higher one can still change one field of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, EnvSettingsSource, YamlConfigSettingsSource

from gateway.config.problems import ConfigError

Presets = Mapping[str, Mapping[str, Mapping[str, str]]]  # section -> preset name -> its fields


def _settings(cls: type[BaseSettings]) -> list[str]:
    """The top-level settings (``exclude``d fields, such as ``base_dir``, are set by the loader, not given)."""
    return [name for name, field in cls.model_fields.items() if not field.exclude]


class EnvironmentSource(EnvSettingsSource):
    """The ``GATEWAY_*`` variables of ``environ``, nested by pydantic-settings at each ``__``.

    Before that, the names are checked: a variable whose first part is no setting is not ours and ignored
    (``GATEWAY_URL`` and other names outside the model), an empty part is malformed, a variable below another
    one's value (``GATEWAY_LISTEN__PORT`` and ``GATEWAY_LISTEN__PORT__X``) conflicts with it; those are reported in
    :attr:`problems` and left out. Values are never JSON: lists are comma-separated (the validators split
    them) and ``GATEWAY_KEY_FORMAT=deployally`` stands for the preset's fields, so that
    ``GATEWAY_KEY_FORMAT__TEST`` can still change one of them.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], presets: Presets) -> None:
        self._environ = environ
        self._presets = presets
        self.problems: list[str] = []
        self.variables: dict[tuple[str, ...], str] = {}  # setting path -> the variable that gave it
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = self.env_prefix
        known = _settings(self.settings_cls)
        given: dict[tuple[str, ...], tuple[str, str]] = {}
        for var, raw in sorted(self._environ.items()):
            if not var.startswith(prefix):
                continue
            path = tuple(var[len(prefix):].lower().split("__"))
            if path[0] not in known:
                continue
            if not all(path):
                self.problems.append(f"{var}: malformed variable name (use {prefix}SECTION__FIELD)")
                continue
            given[path] = (var, raw)
        for section, presets in self._presets.items():
            var, name = given.get((section,), ("", ""))
            if name in presets:
                del given[(section,)]
                for field, value in presets[name].items():
                    given.setdefault((section, field), (var, value))
        out: dict[str, str | None] = {}
        for path, (var, raw) in given.items():
            above = next((given[path[:i]][0] for i in range(1, len(path)) if path[:i] in given), None)
            if above is not None:
                self.problems.append(f"{var}: conflicts with {above} (a value cannot also have fields)")
                continue
            self.variables[path] = var
            out[prefix + "__".join(path)] = raw  # as pydantic-settings (case-sensitive) looks them up
        return out

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return value  # never JSON: see the class docstring

    def variable_for(self, path: tuple[str, ...]) -> str | None:
        """The variable that set the value at ``path``, or a part of it, or a mapping holding it."""
        for given, var in self.variables.items():
            n = min(len(given), len(path))
            if given[:n] == path[:n]:
                return var
        return None


class YamlFile(YamlConfigSettingsSource):
    """The YAML configuration file. One that cannot be read or parsed, or is not a mapping, raises
    :class:`ConfigError` naming the file: there is nothing else to check in it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, presets: Presets) -> None:
        self._known = _settings(settings_cls)
        self._fields = set(settings_cls.model_fields)
        self._presets = presets
        self.problems: list[str] = []
        super().__init__(settings_cls, yaml_file=path, yaml_file_encoding="utf-8")  # reads the file

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            loaded = yaml.safe_load(Path(file_path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"{file_path}: not valid YAML{where}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_path}: cannot read: {exc.__class__.__name__}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file_path}: the top level must be a mapping of settings")
        # A key that is no name (``1:``, ``null:``), or a field of the model that the loader sets (base_dir).
        for name in [k for k in loaded if not isinstance(k, str) or k in self._fields and k not in self._known]:
            del loaded[name]
            shown = name if isinstance(name, str) else yaml.safe_dump(name).splitlines()[0]  # null, not None
            self.problems.append(f"{shown}: unknown setting (known: {', '.join(sorted(self._known))})")
        for section, presets in self._presets.items():
            name = loaded.get(section)
            if isinstance(name, str) and name in presets:
                loaded[section] = dict(presets[name])
        return loaded
