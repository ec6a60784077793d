"""boto3 as AWS users write and read S3, for crates/objects/tests/s3_client.rs.

    python3 s3keys.py write   # stdin: JSON list of objects; puts each into $BUCKET
    python3 s3keys.py read    # stdout: JSON list of every object of $BUCKET, by key

An object: {"key", "body" (base64), "metadata" {name: value}, "tags" {key: value},
"headers" {"ContentType", "CacheControl", ...: boto3's parameter names}}.
Environment: ENDPOINT, BUCKET, KEY_ID, SECRET.
"""

import base64
import json
import os
import sys
import urllib.parse

import boto3
from botocore.config import Config

HEADERS = ["ContentType", "CacheControl", "ContentDisposition", "ContentLanguage",
           "ContentEncoding", "WebsiteRedirectLocation"]


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["KEY_ID"],
        aws_secret_access_key=os.environ["SECRET"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def write(s3, bucket):
    objects = json.load(sys.stdin)
    for o in objects:
        args = {"Bucket": bucket, "Key": o["key"], "Body": base64.b64decode(o["body"])}
        if o.get("metadata"):
            args["Metadata"] = o["metadata"]
        if o.get("tags"):
            args["Tagging"] = urllib.parse.urlencode(o["tags"])
        args.update(o.get("headers", {}))
        s3.put_object(**args)
    print(f"wrote {len(objects)}")


def read(s3, bucket):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            got = s3.get_object(Bucket=bucket, Key=key)
            tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
            out.append({
                "key": key,
                "body": base64.b64encode(got["Body"].read()).decode(),
                "metadata": got.get("Metadata", {}),
                "tags": {t["Key"]: t["Value"] for t in tags},
                "headers": {h: got[h] for h in HEADERS if h in got},
            })
    json.dump(out, sys.stdout)


def main():
    s3, bucket = client(), os.environ["BUCKET"]
    {"write": write, "read": read}[sys.argv[1]](s3, bucket)


if __name__ == "__main__":
    main()
