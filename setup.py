"""Loom: operationalize ML models from metadata.

Versions are pinned together: delta-spark 4.4.0 declares pyspark >=4.0.1,<=4.2.0
and its JVM jar (delta-spark_2.13 4.4.0) is built on Spark 4.2.0. PySpark does
not support pandas 3 yet.
"""

from pathlib import Path

from setuptools import find_packages, setup


def _shipped_files() -> list[tuple[str, list[str]]]:
    """Files a pip-installed Loom needs beside its code, installed under <prefix>/share/loom
    (common.settings.RESOURCE_ROOT): the Spark profiles and the example use cases (searched after
    the user's own, see common.spec.loader.metadata_roots)."""
    here = Path(__file__).resolve().parent
    folders: dict[str, list[str]] = {}
    for pattern in ("spark-conf/*.conf", "metadata/schema.json", "metadata/*/*.yaml", "metadata/*/*.avsc"):
        for path in sorted(here.glob(pattern)):
            relative = path.relative_to(here)
            folders.setdefault(f"share/loom/{relative.parent}", []).append(str(relative))
    return sorted(folders.items())


setup(
    name="loom",
    version="0.1.0",
    description="Operationalize ML models from metadata: features, training, streaming and REST scoring",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["common", "common.*", "jobs", "jobs.*"]),
    include_package_data=True,
    data_files=_shipped_files(),
    install_requires=[
        "pyspark==4.2.0",
        "delta-spark==4.4.0",
        "pandas==2.3.3",
        "numpy==2.4.6",
        "pyarrow==25.0.1",
        "mlflow==3.17.2",
        "scikit-learn==1.9.1",
        "threadpoolctl==3.8.0",  # training: holdout predictions on one OpenMP thread (common.models.train)
        "redis==8.1.0",
        "hiredis==3.5.0",
        "pydantic==2.14.4",
        "pyyaml==6.0.4",
        "sqlglot==30.30.0",
        "cryptography==50.0.2",
        "fastapi==0.165.0",
        "uvicorn[standard]==0.54.0",
        "prometheus-client==0.26.0",
        "croniter==7.0.0",
        "deltalake==1.6.6",  # REST prediction log: Delta appends without a JVM
        "orjson==3.13.0",  # REST fast path: JSON in and out
        "treelite==4.8.1",  # fast predictor of tree ensembles (common.models.fast_predict)
        "confluent-kafka==2.16.2",  # the Kafka producer of `loom generate --to kafka` (librdkafka wheel)
        "fastavro==1.13.1",  # Avro values: the producer's encoder and the check of a source's .avsc file
    ],
    extras_require={
        "dev": [
            # 9.1: pytest 9.2's structured node ids drop xdist 3.8's loadgroup suffix, so `make test`'s groups
            # would be ignored (pytest-dev/pytest-xdist#1386, open)
            "pytest==9.1.1",
            "ruff==0.17.6",
            "httpx==0.28.1",
            "hypothesis==6.170.15",
            "import-linter==2.17",
            "pytest-xdist==3.8.0",
        ],
        "xgboost": ["xgboost"],
        "lightgbm": ["lightgbm"],
    },
    entry_points={"console_scripts": ["loom=jobs.cli:main"]},
)
