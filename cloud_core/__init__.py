"""The science of cloud-screen: structures, SCOPE strings, and (later) the CLOUD model and Debye physics.

Nothing here imports Prefect or DuckDB; orchestration lives in `flows`, storage in `catalogs`.
"""

__version__ = "0.1.0"
