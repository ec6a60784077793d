"""boto3 against lifeboat's object gateway, as an application would use it.

    python3 gateway_client.py ENDPOINT BUCKET KEY_ID SECRET OP [ARGS...]

OP: put KEY DATA [CONTENT_TYPE] | get KEY | delete KEY | list PREFIX [DELIMITER]
| put-many PREFIX COUNT RATE (COUNT objects at RATE per second; prints the
time each PUT was answered, for the latency bench).

Prints one JSON line: the result, or {"error": CODE, "message": ..., "status": N}
when S3 answered an error (boto3 raised ClientError). Retries are off, so a
refusal is seen as it is.
"""
import json
import sys
import time

import boto3
import botocore.config
from botocore.exceptions import ClientError


def main():
    endpoint, bucket, key_id, secret, op, *args = sys.argv[1:]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )
    try:
        if op == "put":
            extra = {"ContentType": args[2]} if len(args) > 2 else {}
            r = s3.put_object(Bucket=bucket, Key=args[0], Body=args[1].encode(), **extra)
            out = {"etag": r["ETag"]}
        elif op == "get":
            r = s3.get_object(Bucket=bucket, Key=args[0])
            out = {"body": r["Body"].read().decode(), "content_type": r.get("ContentType")}
        elif op == "delete":
            s3.delete_object(Bucket=bucket, Key=args[0])
            out = {"deleted": args[0]}
        elif op == "list":
            kw = {"Delimiter": args[1]} if len(args) > 1 else {}
            keys, prefixes = [], []
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=args[0], **kw
            ):
                keys += [o["Key"] for o in page.get("Contents", [])]
                prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            out = {"keys": keys, "prefixes": prefixes}
        elif op == "put-many":
            prefix, count, rate = args[0], int(args[1]), float(args[2])
            start = time.time()
            answered = {}
            for i in range(count):
                due = start + i / rate
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                key = f"{prefix}{i:06d}"
                s3.put_object(Bucket=bucket, Key=key, Body=f"object {i}".encode())
                answered[key] = time.time()
            out = {"answered": answered}
        else:
            raise SystemExit(f"unknown op {op!r}")
    except ClientError as e:
        err = e.response.get("Error", {})
        out = {
            "error": err.get("Code"),
            "message": err.get("Message"),
            "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
