"""storage.path: local folders and s3:// only; a gs:// path is refused with the way GCS works."""

from __future__ import annotations

import pytest

from orchestrator.config.base import check_storage_path


@pytest.mark.parametrize("path", ["./mimray-runs", "/data/runs", "s3://bucket/prefix"])
def test_local_folders_and_s3_are_accepted(path):
    assert check_storage_path(path) == path


def test_gcs_is_refused_with_its_s3_compatible_way_in():
    with pytest.raises(ValueError) as err:
        check_storage_path("gs://bucket/mimray")
    message = str(err.value)
    assert message.startswith("scheme gs:// is not supported")
    assert "AWS_ENDPOINT_URL=https://storage.googleapis.com" in message
    assert "\n" not in message


def test_other_schemes_get_no_gcs_hint():
    with pytest.raises(ValueError, match=r"^scheme hdfs:// is not supported") as err:
        check_storage_path("hdfs://namenode/runs")
    assert "googleapis" not in str(err.value)
