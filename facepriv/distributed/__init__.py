"""The Ray layer, the only package that imports `ray`: `runner` (run_cloak on Ray Data, and
run_in_process without it), `worker` (`ShardWorker`, the Ray Data callable class), `listing`
(keys streamed as a lazy datasource), `uap_fit` (the universal-perturbation actors).
"""
