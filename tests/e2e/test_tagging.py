"""Object tags: set on PUT, multipart create and copy, read back with
GetObjectTagging; a bad tag set is InvalidTag and stores nothing;
PutObjectTagging replaces an existing object's tags."""

import pytest
from botocore.exceptions import ClientError

from conftest import s3_client


def tags(s3, key):
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="tags", Key=key)["TagSet"]}


def test_tags_are_stored_copied_and_read_back(cluster):
    s3 = s3_client(cluster.info)
    s3.create_bucket(Bucket="tags")
    s3.put_object(Bucket="tags", Key="a", Body=b"x", Tagging="project=blue&team=a%20b")
    assert tags(s3, "a") == {"project": "blue", "team": "a b"}
    s3.put_object(Bucket="tags", Key="plain", Body=b"x")
    assert tags(s3, "plain") == {}

    # Copy: COPY (default) keeps them, REPLACE sets new ones, even when the
    # metadata is replaced.
    s3.copy_object(Bucket="tags", Key="c1", CopySource={"Bucket": "tags", "Key": "a"},
                   MetadataDirective="REPLACE", Metadata={"m": "1"})
    assert tags(s3, "c1") == {"project": "blue", "team": "a b"}
    s3.copy_object(Bucket="tags", Key="c2", CopySource={"Bucket": "tags", "Key": "a"},
                   TaggingDirective="REPLACE", Tagging="only=this")
    assert tags(s3, "c2") == {"only": "this"}

    up = s3.create_multipart_upload(Bucket="tags", Key="mp", Tagging="kind=multipart")
    part = s3.upload_part(Bucket="tags", Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"y" * 100)
    s3.complete_multipart_upload(Bucket="tags", Key="mp", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert tags(s3, "mp") == {"kind": "multipart"}

    for bad in ["a=1&a=2", "=v", "k=%zz", "&".join(f"k{i}=v" for i in range(11))]:
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket="tags", Key="bad", Body=b"x", Tagging=bad)
        assert e.value.response["Error"]["Code"] == "InvalidTag", bad
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="tags", Key="bad")
    assert e.value.response["Error"]["Code"] == "NoSuchKey", e.value.response

    # Changing an existing object's tags (more in test_s3_surface.py).
    s3.put_object_tagging(Bucket="tags", Key="a", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    assert tags(s3, "a") == {"k": "v"}
    assert tags(s3, "c1") == {"project": "blue", "team": "a b"}
    with pytest.raises(ClientError) as e:
        s3.get_object_tagging(Bucket="tags", Key="missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
