"""boto3 helper for crates/lifeboat/tests/tables.rs: one action per run.

  client.py ENDPOINT create TABLE
  client.py ENDPOINT wait-table TABLE             (until the table exists, 30 s)
  client.py ENDPOINT burst TABLE PREFIX ACKED     (puts PREFIX0, PREFIX1, ... until a
                                                   write fails; each acknowledged id is
                                                   appended to ACKED and flushed)
  client.py ENDPOINT ids TABLE                     (every item's key, sorted, as JSON, by Scan)

Credentials from KEY_ID / SECRET. No retries: a write either is acknowledged or fails.
"""

import json
import os
import sys
import time

import boto3
import botocore

endpoint, action, table = sys.argv[1], sys.argv[2], sys.argv[3]
client = boto3.client(
    "dynamodb",
    endpoint_url=endpoint,
    region_name="a",
    aws_access_key_id=os.environ["KEY_ID"],
    aws_secret_access_key=os.environ["SECRET"],
    config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
)

if action == "create":
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
elif action == "wait-table":
    deadline = time.time() + 30
    while True:
        try:
            client.describe_table(TableName=table)
            break
        except client.exceptions.ResourceNotFoundException:
            assert time.time() < deadline, f"table {table} never appeared at {endpoint}"
            time.sleep(0.05)
elif action == "burst":
    prefix, acked = sys.argv[4], sys.argv[5]
    with open(acked, "a") as out:
        i = 0
        while True:
            item = {"id": {"S": f"{prefix}{i:06d}"}, "n": {"N": str(i)}, "pad": {"S": "x" * 200}}
            try:
                client.put_item(TableName=table, Item=item)
            except Exception as e:  # the server was killed: the burst ends here
                print(f"burst stopped after {i} acknowledged writes: {type(e).__name__}", flush=True)
                break
            out.write(item["id"]["S"] + "\n")
            out.flush()
            i += 1
elif action == "ids":
    # Each item's key, its key attributes' values joined with "|".
    keys = [k["AttributeName"] for k in client.describe_table(TableName=table)["Table"]["KeySchema"]]
    ids = []
    kw = {"TableName": table}
    while True:
        page = client.scan(**kw)
        ids.extend("|".join(next(iter(i[k].values())) for k in keys) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    print(json.dumps(sorted(ids)))
else:
    sys.exit(f"unknown action {action}")
