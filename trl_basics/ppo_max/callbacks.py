"""The collapse alarm, kept importable from here; it lives in :mod:`trl_basics.callbacks` and runs on every trainer."""

from ..callbacks import CollapseAlarmCallback, CollapseSignals

__all__ = ["CollapseAlarmCallback", "CollapseSignals"]
