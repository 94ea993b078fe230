"""Plan: a cell's resolved config (presets, options, overrides, deviations), its stages and their keys,
and the suites that grid cells. Nothing here trains or imports torch."""
