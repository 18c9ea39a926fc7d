"""The image stages by name, for the command line and the Engine.

``register`` (joint line, motion, target) is the default of replay and video; the plug-in adds
``needle``. ``needle`` and ``contrast`` are not validated for guidance yet (README, Limits), so
they run only when asked for, and the summary's ``stages`` says which ran: a ``needle: null``
or contrast ``none`` means *not assessed* when the stage is not listed there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sifluoro.config import Settings
from sifluoro.errors import ConfigError

if TYPE_CHECKING:
    from sifluoro.pipeline import Stage

# Pipeline order: needle and contrast use the joint line, target and motion of register.
STAGE_NAMES = ("register", "needle", "contrast")
REPLAY_STAGES = ("register",)
LIVE_STAGES = ("register", "needle")


def parse_stage_names(text: str) -> tuple[str, ...]:
    """``"register,needle"`` into names in pipeline order; ``""`` or ``"none"`` for dose only."""
    names = {n.strip() for n in text.split(",") if n.strip()} - {"none"}
    unknown = sorted(names - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"unknown image stage(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(STAGE_NAMES)} (comma-separated) or none")
    return tuple(n for n in STAGE_NAMES if n in names)


def make_stages(names, settings: Settings | None = None) -> list[Stage]:
    """Fresh stages for ``names`` (any order, validated), in pipeline order."""
    names = parse_stage_names(",".join(names))
    settings = settings or Settings()
    stages: list[Stage] = []
    if "register" in names:
        from sifluoro.register.stage import JointStage
        stages.append(JointStage())
    if "needle" in names:
        from sifluoro.track.needle import NeedleStage
        stages.append(NeedleStage(settings))
    if "contrast" in names:
        from sifluoro.track.contrast import ContrastStage
        stages.append(ContrastStage())
    return stages


def as_stages(stages, settings: Settings) -> list[Stage]:
    """``stages`` as stage objects: names (``["register", "needle"]``) are made with
    :func:`make_stages`; stage objects are used as given."""
    stages = list(stages)
    if stages and all(isinstance(s, str) for s in stages):
        return make_stages(stages, settings)
    if any(isinstance(s, str) for s in stages):
        raise ValueError("stages: give names or stage objects, not both")
    return stages


def add_stages_argument(p, default: tuple[str, ...]) -> None:
    """``--stages NAMES`` on a subcommand (parsed into a tuple of names)."""
    p.add_argument("--stages", type=_argparse_names, default=default, metavar="NAMES",
                   help=f"image stages, comma-separated from {','.join(STAGE_NAMES)} or none "
                        f"(default {','.join(default)}; needle and contrast are not validated "
                        f"for guidance yet)")


def _argparse_names(text: str) -> tuple[str, ...]:
    import argparse

    given = {n.strip() for n in text.split(",") if n.strip()}
    if not given:  # an unset shell variable would turn guidance off without a word
        raise argparse.ArgumentTypeError("no stage named; give none for dose only")
    if "none" in given and len(given) > 1:
        raise argparse.ArgumentTypeError(f"none and {', '.join(sorted(given - {'none'}))} "
                                         "contradict each other")
    try:
        return parse_stage_names(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
