"""Costs that must stay flat as data grows: a data set built in SQL at two sizes, the hot and
listing statements run against both with `EXPLAIN (ANALYZE, BUFFERS)`, and the rule that
says which of them must not grow. `make bench-scale` and `tests/test_scale.py` share it."""
