"""Each job's config of a sweep, as Hydra composes it, at a fraction of the cost.

Hydra composes every job from scratch: the defaults tree, a dozen YAML files, the schema's merges,
about 0.1 s a job here, more than a short job's own work. Jobs that differ only in values of
keys (`lr=0.1` and `lr=0.3`, not `backend=tf` and `backend=torch`) share everything but those
values. So the first job of each such family is composed by Hydra, and each later one is a copy of
it with its own values applied by Hydra's own override code (a few ms), its overrides and
override_dirname as Hydra sets them. tests/test_config.py holds the two ways equal, field for
field, on sweeps of each kind of value.

A job is composed whole wherever that is not plainly the same: an override that picks a config
group, adds or deletes a key (`+key`, `~key`), sets a Hydra key, gives a mapping (which merges
into what is there), or touches a key another override of the job touches; and wherever applying
the values fails, so that a bad value gets Hydra's own message.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional, Sequence

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict


def jobs(config_loader: Any, sweep_config: DictConfig, job_overrides: Sequence[Sequence[str]]) -> Iterator[DictConfig]:
    """Each job's config, in order, as `config_loader.load_sweep_config` composes it."""
    parser = OverridesParser.create()
    groups = set(sweep_config.hydra.runtime.choices)
    families: dict[tuple, tuple[list[Override], DictConfig]] = {}
    for overrides in job_overrides:
        parsed = parser.parse_overrides(list(overrides))
        varying = [_may_vary(o, groups) for o in parsed]
        family = _family(parsed, varying, groups)
        found = families.get(family) if family is not None else None
        cfg = _derived(sweep_config, *found, parsed) if found is not None else None
        if cfg is None:
            cfg = config_loader.load_sweep_config(sweep_config, list(overrides))
            if family is not None and found is None and all(_is_value(cfg, o) for o, v in zip(parsed, varying) if v):
                families[family] = (parsed, cfg)
        yield cfg


def _may_vary(override: Override, groups: set[str]) -> bool:
    """Whether the override sets a value whose change can be applied to a composed config as
    Hydra applies it: `key=value` (a number, a string, a list of them), not a config group
    (`groups`: the sweep's) or a Hydra key."""
    if override.type != OverrideType.CHANGE or override.is_sweep_override() or override.is_hydra_override():
        return False
    if _is_group(override, groups):
        return False
    value = override.value()
    return not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value))


def _is_group(override: Override, groups: set[str]) -> bool:
    return override.package is not None or "/" in override.key_or_group or override.key_or_group in groups


def _family(parsed: Sequence[Override], varying: Sequence[bool], groups: set[str]) -> Optional[tuple]:
    """What jobs of one family share: each override's key, and its whole text where it cannot
    vary; None where the job is composed whole every time: two of its overrides set one key, or a
    key and a key inside it (Hydra applies them in order). A group's choice is not a value: it
    picks the files the values are applied to, the same for the whole family."""
    keys = [o.key_or_group for o in parsed if not _is_group(o, groups)]
    if any(a == b or b.startswith(a + ".") for i, a in enumerate(keys) for j, b in enumerate(keys) if i != j):
        return None
    return tuple((o.key_or_group, None if v else o.input_line) for o, v in zip(parsed, varying))


def _is_value(cfg: DictConfig, override: Override) -> bool:
    """Whether the key is a value in the composed config (not a config group's node)."""
    if override.key_or_group in cfg.hydra.runtime.choices:
        return False
    return not isinstance(OmegaConf.select(cfg, override.key_or_group, throw_on_missing=False), DictConfig)


def _derived(sweep_config: DictConfig, first: Sequence[Override], first_cfg: DictConfig,
             parsed: Sequence[Override]) -> Optional[DictConfig]:
    """The config of the job with overrides `parsed`, from its family's first: its values applied
    as `ConfigLoaderImpl` applies them; None where that fails (the job is then composed whole)."""
    cfg = copy.deepcopy(first_cfg)
    changed = [o for o, was in zip(parsed, first) if o.input_line != was.input_line]
    try:
        ConfigLoaderImpl._apply_overrides_to_config(changed, cfg)
    except Exception:  # noqa: BLE001 - composed whole, Hydra says what is wrong
        return None
    task = [o for o in parsed if not o.is_hydra_override()]
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in task]
        naming = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    OmegaConf.copy_cache(from_config=sweep_config, to_config=cfg)
    return cfg
