"""Tools beside the pipeline, not stages: the benchmark (``python -m tools.bench``, ``python -m tools.bench_ddp``),
the official code's loops it compares with (:mod:`tools.official_loops`) and the presets command
(``python -m tools.preset``). They may use the library and the stage kit; neither imports them."""
