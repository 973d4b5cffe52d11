"""Storage and formats: `archive` (fsspec archives, local or s3://, atomic writes, retries),
`imageio` (decode / encode by content), `manifest` (the Parquet schema, declared once there),
`perturbation` (universal-perturbation files and their sidecars).
"""
