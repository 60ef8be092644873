"""Hostile object-storage locations: a remote ``--results`` that names an object or a whole bucket, a missing bucket,
URLs with ``..``, ``//`` or a trailing slash. Against moto's S3 server on 127.0.0.1, as tests/test_remote.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import one_error_line

from featcache.cli import main
from featcache.locations import RemotePath, location
from featcache.results import ResultsError, claim, claims_dir, holder, load_records


def test_a_remote_results_url_naming_an_object_is_refused_not_read_as_empty(s3):
    # a local results.jsonl uploaded as it is: read as a prefix it held no records, and appends went below it
    log = s3.url("uploaded", "results.jsonl")
    location(log).write_bytes(json.dumps({"schema": 2, "id": "x"}).encode() + b"\n")
    r = CliRunner().invoke(main, ["--results", log, "results"])
    assert r.exit_code == 1
    one_error_line(r.output, f"--results {log} is an object, not a prefix", "copy the file to a local path")
    with pytest.raises(ResultsError, match="is an object, not a prefix"):
        load_records(log)
    assert load_records(s3.url("uploaded")) == []  # its folder is a prefix like any other: no record objects


def test_a_missing_bucket_for_a_remote_log_names_the_url_once(s3):
    r = CliRunner().invoke(main, ["--results", "s3://no-such-bucket/log", "results"])
    assert r.exit_code == 1
    line = one_error_line(r.output, "bucket 'no-such-bucket' does not exist")
    assert line.count("s3://no-such-bucket/log") == 1, line


def test_claims_on_a_remote_log_that_is_a_whole_bucket_stay_in_that_bucket(s3):
    log = f"s3://{s3.bucket}"
    folder = claims_dir(log)
    assert isinstance(folder, RemotePath) and folder.bucket == s3.bucket
    with claim(log + "/", "probe-key", wait=False) as mine:
        assert mine and "on host" in holder(log, "probe-key")
        with claim(log, "probe-key", wait=False) as other:
            assert not other
    assert load_records(log) == []  # the claims are no records of the log


@pytest.mark.parametrize("url", ["s3://{b}/cache/../other", "s3://{b}/../x", "s3://{b}/a/.."])
def test_a_url_with_dotdot_is_refused_as_not_a_parent(s3, url):
    url = url.format(b=s3.bucket)
    r = CliRunner().invoke(main, ["--cache-dir", url, "ls"])
    assert r.exit_code == 1
    one_error_line(r.output, f"--cache-dir '{url}'", "'..' in an object-store URL")


def test_trailing_and_doubled_slashes_name_the_same_prefix(s3):
    plain = location(s3.url("cache", "x"))
    for typed in (s3.url("cache", "x") + "/", f"s3://{s3.bucket}//cache//x", f"s3://{s3.bucket}/cache/./x/"):
        assert location(typed) == plain


def test_a_missing_store_given_by_url_points_at_ls_not_at_extracting_the_url(s3):
    url = s3.url("cache", "cifar10", "nothere.zarr")
    r = CliRunner().invoke(main, ["verify", url])
    assert r.exit_code == 1
    assert f"no store {url}; check the path (`featcache ls --cache-dir {s3.url('cache')}`" in r.output, r.output
    assert "--ckpt s3://" not in r.output
    r = CliRunner().invoke(main, ["probe", "--stores", url])
    one_error_line(r.output, f"no store {url}; check the path")
