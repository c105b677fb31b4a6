"""Route rows written exactly as the replaced system's Terraform writes them.

Copied from ``dwp/dataworks-aws-data-egress`` ``data-egress.tf`` (``aws_dynamodb_table_item``
resources): the same columns, the same values, the same types (``{"S": …}`` and
``{"bool": …}``, so ``""`` for an unused SSM parameter name and ``false`` for
``rewrap_datakey``). Only what Terraform interpolates is filled in here: bucket names
(``${data.terraform_remote_state…}``, keyword arguments below), role ARNs, ``${each.key}``
of the RIS collections (``db.core.claimant``), and the RTG rows' values, which that
Terraform reads from a CSV in Secrets Manager (``local.rtg_pdm_queries``,
``local.rtg_incremental_collections``): those are chosen to look like the CSV's columns.

Each function returns a fresh plain dict (the row as ``TypeDeserializer`` gives it back);
:func:`as_item` turns one into the low-level item Terraform puts.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.types import TypeSerializer

PUBLISHED_BUCKET = "published-bucket"  # data.terraform_remote_state.common.outputs.published_bucket.id
HTME_BUCKET = "htme-bucket"  # data.terraform_remote_state.internal_compute.outputs.htme_s3_bucket.id
OPSMI_BUCKET = "opsmi-bucket"  # local.opsmi[local.environment].bucket_name
RTG_BUCKET = "rtg-bucket"  # local.pdm_rtg[local.environment].bucket_name
RTG_ROLE_ARN = "arn:aws:iam::123456789012:role/rtg-egress"  # local.pdm_rtg[…].rtg_role_arn
RTG_SSM_PARAMETER = "/rtg/pdm/public_key"  # each.value.encrypting_key_ssm_parm_name (from the CSV)
RIS_COLLECTION = "db.core.claimant"  # one of local.ris_collections (each.key)


def opsmi(*, source_bucket: str = PUBLISHED_BUCKET, destination_bucket: str = OPSMI_BUCKET) -> dict[str, Any]:
    """``opsmi_data_egress_config``: decrypt to the root of the OpsMI bucket (``"/"``)."""
    return {
        "source_prefix": "opsmi/",
        "pipeline_name": "OpsMI",
        "recipient_name": "OpsMI",
        "transfer_type": "S3",
        "source_bucket": source_bucket,
        "destination_bucket": destination_bucket,
        "destination_prefix": "/",
        "decrypt": True,
        "rewrap_datakey": False,
        "encrypting_key_ssm_parm_name": "",
    }


def cbol(*, source_bucket: str = PUBLISHED_BUCKET, destination_bucket: str = OPSMI_BUCKET) -> dict[str, Any]:
    """``cbol_data_egress_config``: a dated wildcard folder to a dated destination folder."""
    return {
        "source_prefix": "dataegress/cbol-report/$TODAYS_DATE/*",
        "pipeline_name": "CBOL",
        "recipient_name": "CBOL",
        "transfer_type": "S3",
        "source_bucket": source_bucket,
        "destination_bucket": destination_bucket,
        "destination_prefix": "cbol/$TODAYS_DATE/",
        "decrypt": True,
        "rewrap_datakey": False,
        "encrypting_key_ssm_parm_name": "",
    }


def ris_incremental(*, source_bucket: str = HTME_BUCKET, collection: str = RIS_COLLECTION) -> dict[str, Any]:
    """``htme_incremental_ris_data_egress_config``: SFT to ``/data-egress/RIS``, control file, timestamps."""
    return {
        "source_prefix": f"businessdata/mongo/ucdata/$TODAYS_DATE/incremental/{collection}-*",
        "pipeline_name": "RIS_SFT",
        "recipient_name": "DSP",
        "transfer_type": "SFT",
        "source_bucket": source_bucket,
        "destination_prefix": "/data-egress/RIS",
        "decrypt": True,
        "rewrap_datakey": False,
        "control_file_prefix": f"{collection}-$TODAYS_DATE.control",
        "timestamp_files": True,
        "encrypting_key_ssm_parm_name": "",
    }


def ris_site(*, source_bucket: str = PUBLISHED_BUCKET) -> dict[str, Any]:
    """``pdm_jsons_ris_data_egress``: SFT to ``/data-egress/RIS`` with a fixed control file name."""
    return {
        "source_prefix": "common-model-inputs/data/site/*",
        "pipeline_name": "RIS_SFT",
        "recipient_name": "DSP",
        "transfer_type": "SFT",
        "source_bucket": source_bucket,
        "destination_prefix": "/data-egress/RIS",
        "decrypt": True,
        "rewrap_datakey": False,
        "control_file_prefix": "initial-organisation-files-$TODAYS_DATE.control",
        "timestamp_files": True,
        "encrypting_key_ssm_parm_name": "",
    }


def sas_housing(*, source_bucket: str = PUBLISHED_BUCKET) -> dict[str, Any]:
    """``housing_SAS_data_egress_config``: SFT as is (no decrypt) to ``/data-egress/sas/``."""
    return {
        "source_prefix": "dataegress/sas/ucs_housing/export/$TODAYS_DATE/*",
        "pipeline_name": "DWX-SAS-SFT01",
        "recipient_name": "Housing",
        "transfer_type": "SFT",
        "source_bucket": source_bucket,
        "destination_prefix": "/data-egress/sas/",
        "decrypt": False,
        "rewrap_datakey": False,
        "encrypting_key_ssm_parm_name": "",
    }


def warehouse(*, source_bucket: str = PUBLISHED_BUCKET) -> dict[str, Any]:
    """``data_warehouse_config``: a wildcard row decrypted to ``/data-egress/warehouse/``."""
    return {
        "source_prefix": "dataegress/dwh/*",
        "pipeline_name": "DWH-Transform-Json",
        "recipient_name": "DataWarehouse",
        "transfer_type": "SFT",
        "source_bucket": source_bucket,
        "destination_prefix": "/data-egress/warehouse/",
        "decrypt": True,
        "rewrap_datakey": False,
        "encrypting_key_ssm_parm_name": "",
    }


def rtg_pdm(
    *,
    source_bucket: str = PUBLISHED_BUCKET,
    destination_bucket: str = RTG_BUCKET,
    role_arn: str = RTG_ROLE_ARN,
    ssm_parameter: str = RTG_SSM_PARAMETER,
) -> dict[str, Any]:
    """``pdm_rtg_data_egress_config``: re-wrap the data keys for RTG, cross-account.

    The CSV values (prefixes, ``decrypt``, ``rewrap_datakey``, the SSM parameter name)
    are chosen; the columns and their types are the Terraform's.
    """
    return {
        "source_prefix": "data/uc/pdm/$TODAYS_DATE/",
        "pipeline_name": "PDM_RTG",
        "recipient_name": "RTG",
        "transfer_type": "S3",
        "source_bucket": source_bucket,
        "destination_bucket": destination_bucket,
        "destination_prefix": "pdm/$TODAYS_DATE/",
        "decrypt": False,
        "rewrap_datakey": True,
        "encrypting_key_ssm_parm_name": ssm_parameter,
        "role_arn": role_arn,
    }


def rtg_incremental_manifest(
    *,
    source_bucket: str = PUBLISHED_BUCKET,
    destination_bucket: str = RTG_BUCKET,
    role_arn: str = RTG_ROLE_ARN,
) -> dict[str, Any]:
    """``htme_incremental_manifest_rtg_data_egress_config``-like: as is to RTG, with a manifest.

    The Terraform's version with ``manifest_file_name`` and ``manifest_file_encryption``;
    the CSV's ``manifest_file_encryption`` is ``""`` here (a plaintext manifest: the one
    kind this worker writes). The trailing ``-`` the Terraform appends to the CSV prefix
    is replaced by ``-*`` so that a flag in a folder below it matches.
    """
    return {
        "source_prefix": "businessdata/mongo/ucdata/$TODAYS_DATE/incremental/db.core.contract-*",
        "pipeline_name": "HTME_RTG_Incremental",
        "recipient_name": "RTG",
        "transfer_type": "S3",
        "source_bucket": source_bucket,
        "destination_bucket": destination_bucket,
        "destination_prefix": "incremental/$TODAYS_DATE/",
        "decrypt": False,
        "rewrap_datakey": False,
        "encrypting_key_ssm_parm_name": "",
        "manifest_file_name": "manifest-$TODAYS_YYYYMMDD_FORMATTED_DATE.json",
        "manifest_file_encryption": "",
        "role_arn": role_arn,
    }


def all_rows() -> list[dict[str, Any]]:
    """One row of each kind above, with the default bucket names."""
    return [
        opsmi(),
        cbol(),
        ris_incremental(),
        ris_site(),
        sas_housing(),
        warehouse(),
        rtg_pdm(),
        rtg_incremental_manifest(),
    ]


def as_item(row: dict[str, Any]) -> dict[str, Any]:
    """The low-level DynamoDB item (``{"S": …}``, ``{"BOOL": …}``) Terraform puts for ``row``."""
    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in row.items()}
