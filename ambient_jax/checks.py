"""The one form of a bad config value: ValueError("config field SECTION.NAME: what to do").

Each module checks the config section it owns (losses.check_config for config.loss, nets for
config.model, ...); config.check_config calls them all. Comparisons are written so that NaN
fails them.
"""

from typing import Any, Callable, Iterable


def need(ok: bool, field: str, message: str) -> None:
    """Raise the config error for `field` unless `ok`."""
    if not ok:
        raise ValueError(f"config field {field}: {message}")


def need_each(
    section_name: str, section: Any, rules: Iterable[tuple[str, Callable[[Any], bool], str]]
) -> None:
    """Each rule (name, ok, says) on section[name], where the section has that field (a config
    saved before the field existed lacks it)."""
    for name, ok, says in rules:
        if name in section:
            value = section[name]
            need(ok(value), f"{section_name}.{name}", f"{says}, got {value}")


def need_counts(section_name: str, section: Any, names: Iterable[str]) -> None:
    """Each of these fields is a count >= 1."""
    for name in names:
        need(int(section[name]) >= 1, f"{section_name}.{name}", "must be >= 1")
