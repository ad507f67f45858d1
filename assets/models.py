"""The model release in Dagster (issue #27): each registered model's vectors and shadow index, one partition per model.

The registry (``image-search models add``) is the truth; ``model_registry_sensor`` keeps the
``models`` partitions equal to it and requests ``build_model_shadows`` for a model when it
is new and after each published refresh, so every candidate follows the catalog in the
shadow while the serving model answers. Compares and promotions are recorded as runless
materializations of ``model_release`` with their figures and who ran them.
"""

import json
from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DagsterInstance,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    asset,
    define_asset_job,
    sensor,
)

from assets.embeddings import CELERY_QUEUE_TAG, ENCODER_QUEUE
from resources.config import Settings
from resources.models.registry import Registry
from resources.models.release import build_shadow, encode_pair

model_partitions = DynamicPartitionsDefinition(name="models")
MODEL_RELEASE = AssetKey("model_release")

model_release = AssetSpec(
    MODEL_RELEASE,
    group_name="models",
    description="The release history of models: each `image-search models compare`, promote and rollback, with its figures.",
)


@asset(
    group_name="models",
    partitions_def=model_partitions,
    # A model's vectors cover every bucket: each of its runs reads all the images stored so far.
    deps=["photo_catalog", AssetDep("images", partition_mapping=AllPartitionMapping())],
    kinds={"pytorch", "parquet"},
    pool="clip_model",
    op_tags={CELERY_QUEUE_TAG: ENCODER_QUEUE},
    description="The image vectors of each registered model pair, in that image model's folder under embeddings/.",
)
def model_vectors(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Encode the stored images lacking a current vector of the partition's model."""
    pair = Registry(settings).get(context.partition_key)
    figures = encode_pair(settings, pair, context.log.info)
    return MaterializeResult(
        metadata={
            "dagster/row_count": figures["vectors"],
            **{key: figures[key] for key in ("encoded", "failed", "dim", "images_per_s")},
            **{key: MetadataValue.text(value) for key, value in pair.ids().items()},
            "path": MetadataValue.path(figures["path"]),
        }
    )


@asset(
    group_name="models",
    partitions_def=model_partitions,
    deps=["photo_catalog", model_vectors],
    kinds={"numpy", "elasticsearch"},
    description="Each registered model's own index build, in the shadow: built and validated, never searched until promoted.",
)
def model_index(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Build the partition's model into its shadow index on the configured backend."""
    pair = Registry(settings).get(context.partition_key)
    report = build_shadow(settings, pair, lambda done, total: context.log.info(f"{pair.name}: build {done}/{total}"))
    return MaterializeResult(
        metadata={
            "dagster/row_count": report.count,
            "build": report.name,
            "build_seconds": round(report.seconds, 2),
            "backend": settings.backend,
            **{key: MetadataValue.text(value) for key, value in pair.ids().items()},
            "dim": pair.dim,
        }
    )


model_shadow_job = define_asset_job(
    "build_model_shadows",
    selection=[model_vectors, model_index],
    description="Encode one registered model's vectors and build its shadow index.",
)


@sensor(
    job=model_shadow_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keep the models partitions equal to the registry; build new models, and every model after a refresh.",
)
def model_registry_sensor(context: SensorEvaluationContext, settings: ResourceParam[Settings]):
    """Add and delete ``models`` partitions as the registry changed; one run per model and published refresh."""
    names = [pair.name for pair in Registry(settings).candidates()]
    known = set(context.instance.get_dynamic_partitions(model_partitions.name))
    latest = context.instance.get_latest_materialization_event(AssetKey("search_index"))
    refresh = latest.storage_id if latest is not None else "none"
    added, deleted = sorted(set(names) - known), sorted(known - set(names))
    requests = [model_partitions.build_add_request(added)] if added else []
    requests += [model_partitions.build_delete_request(deleted)] if deleted else []
    return SensorResult(
        run_requests=[RunRequest(run_key=f"{name}:{refresh}", partition_key=name) for name in names],
        dynamic_partitions_requests=requests,
    )


def record_release(instance: DagsterInstance, action: str, figures: dict[str, Any], ran_by: str) -> None:
    """Record a compare, promotion or rollback as a runless materialization of ``model_release``."""
    flat: dict[str, Any] = {"action": action, "ran_by": MetadataValue.text(ran_by)}
    for name, model in figures.get("models", {}).items():
        for metric in ("ndcg_at_10", "recall_at_10"):
            if model.get(metric):
                flat[f"{name}/{metric}"] = model[metric]["mean"]
    flat["figures"] = MetadataValue.json(json.loads(json.dumps(figures, default=str)))
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=MODEL_RELEASE, description=f"models {action} by {ran_by}", metadata=flat)
    )
