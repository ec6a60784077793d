"""boto3's DynamoDB Streams client against one lifeboat table server, as an AWS
user's code reads a table's stream.

Run by crates/tables/tests/streams.rs with ENDPOINT, KEY_ID and SECRET in the
environment; every check is an assert (a failure exits non-zero with the traceback).
"""

import datetime
import os
import time

import boto3
import botocore
from botocore.exceptions import ClientError

KW = dict(
    endpoint_url=os.environ["ENDPOINT"],
    region_name="a",
    aws_access_key_id=os.environ["KEY_ID"],
    aws_secret_access_key=os.environ["SECRET"],
    config=botocore.config.Config(retries={"max_attempts": 1}),
)
client = boto3.client("dynamodb", **KW)
streams = boto3.client("dynamodbstreams", **KW)


def expect_error(fn, want):
    try:
        fn()
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == want, (got, e.response["Error"].get("Message"))
        return e
    raise AssertionError(f"expected {want}, got no error")


def create(name, view=None, range_key=False):
    kw = dict(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}]
        + ([{"AttributeName": "sk", "KeyType": "RANGE"}] if range_key else []),
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}]
        + ([{"AttributeName": "sk", "AttributeType": "N"}] if range_key else []),
        BillingMode="PAY_PER_REQUEST",
    )
    if view:
        kw["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view}
    return client.create_table(**kw)["TableDescription"]


def shard_of(arn):
    d = streams.describe_stream(StreamArn=arn)["StreamDescription"]
    assert len(d["Shards"]) == 1, d
    return d["Shards"][0]["ShardId"]


def iterator(arn, kind="TRIM_HORIZON", seq=None):
    kw = dict(StreamArn=arn, ShardId=shard_of(arn), ShardIteratorType=kind)
    if seq is not None:
        kw["SequenceNumber"] = seq
    return streams.get_shard_iterator(**kw)["ShardIterator"]


def drain(it, limit=None):
    """Every record from `it` on, paging until a page is empty; and the next iterator."""
    out = []
    while True:
        r = streams.get_records(ShardIterator=it, **({"Limit": limit} if limit else {}))
        # The shard stays open: a next iterator, records or not.
        assert r.get("NextShardIterator"), r
        it = r["NextShardIterator"]
        if limit:
            assert len(r["Records"]) <= limit
        if not r["Records"]:
            return out, it
        out += r["Records"]


def seq(rec):
    return rec["dynamodb"]["SequenceNumber"]


# --- a stream of every change, in order -------------------------------------
desc = create("events", "NEW_AND_OLD_IMAGES", range_key=True)
assert desc["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
arn = desc["LatestStreamArn"]
assert client.describe_table(TableName="events")["Table"]["LatestStreamArn"] == arn
assert arn.endswith("/stream/" + desc["LatestStreamLabel"]), arn

key = {"pk": {"S": "item"}, "sk": {"N": "1"}}
client.put_item(TableName="events", Item={**key, "v": {"N": "1"}})
for i in range(10):
    client.put_item(TableName="events", Item={"pk": {"S": "other"}, "sk": {"N": str(i)}, "n": {"S": f"o{i}"}})
client.update_item(TableName="events", Key=key, UpdateExpression="SET v = :v", ExpressionAttributeValues={":v": {"N": "2"}})
for i in range(10, 20):
    client.put_item(TableName="events", Item={"pk": {"S": "other"}, "sk": {"N": str(i)}, "n": {"S": f"o{i}"}})
client.update_item(
    TableName="events", Key=key, UpdateExpression="SET v = :v, extra = :x",
    ExpressionAttributeValues={":v": {"N": "3"}, ":x": {"S": "x"}},
)
# A put of the same item changes nothing: no record, as DynamoDB writes none.
client.put_item(TableName="events", Item={**key, "v": {"N": "3"}, "extra": {"S": "x"}})
client.delete_item(TableName="events", Key=key)

records, _ = drain(iterator(arn), limit=7)
assert len(records) == 24, len(records)
seqs = [seq(r) for r in records]
assert all(len(s) == 21 and s.isdigit() for s in seqs), seqs
assert seqs == sorted(seqs) and [int(s) for s in seqs] == sorted(int(s) for s in seqs)
assert len(set(seqs)) == 24 and len({r["eventID"] for r in records}) == 24
now = datetime.datetime.now(datetime.timezone.utc)
for r in records:
    assert r["eventSource"] == "aws:dynamodb" and r["eventVersion"] == "1.1" and r["awsRegion"] == "a", r
    d = r["dynamodb"]
    assert d["StreamViewType"] == "NEW_AND_OLD_IMAGES" and d["SizeBytes"] > 0
    assert isinstance(d["ApproximateCreationDateTime"], datetime.datetime)
    assert abs((now - d["ApproximateCreationDateTime"]).total_seconds()) < 120, d["ApproximateCreationDateTime"]
    assert "userIdentity" not in r
mine = [r for r in records if r["dynamodb"]["Keys"] == key]
assert [r["eventName"] for r in mine] == ["INSERT", "MODIFY", "MODIFY", "REMOVE"], mine
ins, mod1, mod2, rem = (r["dynamodb"] for r in mine)
assert ins["NewImage"] == {**key, "v": {"N": "1"}} and "OldImage" not in ins
assert mod1["OldImage"]["v"] == {"N": "1"} and mod1["NewImage"]["v"] == {"N": "2"}
assert mod2["OldImage"] == {**key, "v": {"N": "2"}}
assert mod2["NewImage"] == {**key, "v": {"N": "3"}, "extra": {"S": "x"}}
assert rem["OldImage"] == mod2["NewImage"] and "NewImage" not in rem
others = [r for r in records if r["dynamodb"]["Keys"]["pk"] == {"S": "other"}]
assert [r["dynamodb"]["NewImage"]["n"]["S"] for r in others] == [f"o{i}" for i in range(20)]
# One page without Limit has them all.
page = streams.get_records(ShardIterator=iterator(arn))
assert [seq(r) for r in page["Records"]] == seqs
expect_error(lambda: streams.get_records(ShardIterator=iterator(arn), Limit=1001), "ValidationException")

# --- ListStreams and DescribeStream ------------------------------------------
create("plain")  # no stream
keys_only = create("keysonly", "KEYS_ONLY")
listed = streams.list_streams()["Streams"]
assert sorted(s["TableName"] for s in listed) == ["events", "keysonly"], listed
mine_listed = streams.list_streams(TableName="events")["Streams"]
assert mine_listed == [{"StreamArn": arn, "TableName": "events", "StreamLabel": desc["LatestStreamLabel"]}], mine_listed
assert streams.list_streams(TableName="plain")["Streams"] == []
assert "LatestStreamArn" not in client.describe_table(TableName="plain")["Table"]
expect_error(lambda: streams.list_streams(TableName="nope"), "ResourceNotFoundException")
first = streams.list_streams(Limit=1)
assert len(first["Streams"]) == 1 and first["LastEvaluatedStreamArn"] == first["Streams"][0]["StreamArn"]
rest = streams.list_streams(Limit=1, ExclusiveStartStreamArn=first["LastEvaluatedStreamArn"])
assert len(rest["Streams"]) == 1 and rest["Streams"][0] != first["Streams"][0]
assert "LastEvaluatedStreamArn" not in rest or streams.list_streams(
    ExclusiveStartStreamArn=rest["LastEvaluatedStreamArn"])["Streams"] == []

d = streams.describe_stream(StreamArn=arn)["StreamDescription"]
assert d["StreamArn"] == arn and d["StreamStatus"] == "ENABLED" and d["TableName"] == "events"
assert d["StreamViewType"] == "NEW_AND_OLD_IMAGES" and d["StreamLabel"] == desc["LatestStreamLabel"]
assert d["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
assert isinstance(d["CreationRequestDateTime"], datetime.datetime)
(shard,) = d["Shards"]
assert shard["ShardId"].startswith("shardId-") and 28 <= len(shard["ShardId"]) <= 65, shard
assert "EndingSequenceNumber" not in shard["SequenceNumberRange"], shard  # open
assert shard["SequenceNumberRange"]["StartingSequenceNumber"] <= seqs[0]
assert streams.describe_stream(StreamArn=arn, ExclusiveStartShardId=shard["ShardId"])["StreamDescription"]["Shards"] == []
assert shard_of(arn) == shard["ShardId"], "the shard id is stable"
expect_error(lambda: streams.describe_stream(StreamArn=arn.replace("events", "nope")), "ResourceNotFoundException")
expect_error(
    lambda: streams.get_shard_iterator(
        StreamArn=arn, ShardId="shardId-00000000000000000000-00000000", ShardIteratorType="TRIM_HORIZON"),
    "ResourceNotFoundException",
)

# --- LATEST, AT / AFTER_SEQUENCE_NUMBER ----------------------------------------
latest, nxt = drain(iterator(arn, "LATEST"))
assert latest == []
client.put_item(TableName="events", Item={"pk": {"S": "late"}, "sk": {"N": "1"}})
later, _ = drain(nxt)
assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in later] == [("INSERT", "late")], later
everything = records + later

i = everything.index(mine[1])  # the first MODIFY of "item"
after, _ = drain(iterator(arn, "AFTER_SEQUENCE_NUMBER", seq(everything[i])), limit=5)
assert [r["eventID"] for r in after] == [r["eventID"] for r in everything[i + 1:]]
at, _ = drain(iterator(arn, "AT_SEQUENCE_NUMBER", seq(everything[i])))
assert [r["eventID"] for r in at] == [r["eventID"] for r in everything[i:]]
expect_error(lambda: iterator(arn, "AT_SEQUENCE_NUMBER", "1" * 20 + "x"), "ValidationException")
expect_error(lambda: iterator(arn, "AT_SEQUENCE_NUMBER", "9" * 21), "ValidationException")
expect_error(lambda: streams.get_shard_iterator(
    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="AT_SEQUENCE_NUMBER"), "ValidationException")

# --- bad iterators ----------------------------------------------------------
expect_error(lambda: streams.get_records(ShardIterator="garbage"), "ValidationException")
good = iterator(arn)
mid = len(good) // 2
tampered = good[:mid] + ("A" if good[mid] != "A" else "B") + good[mid + 1:]
expect_error(lambda: streams.get_records(ShardIterator=tampered), "ValidationException")
assert streams.get_records(ShardIterator=good)["Records"], "the untampered one still reads"

# --- KEYS_ONLY --------------------------------------------------------------
k = {"pk": {"S": "k1"}}
client.put_item(TableName="keysonly", Item={**k, "v": {"S": "a"}})
client.put_item(TableName="keysonly", Item={**k, "v": {"S": "b"}})
client.delete_item(TableName="keysonly", Key=k)
ko, _ = drain(iterator(keys_only["LatestStreamArn"]))
assert [r["eventName"] for r in ko] == ["INSERT", "MODIFY", "REMOVE"]
for r in ko:
    assert set(r["dynamodb"]) == {"ApproximateCreationDateTime", "Keys", "SequenceNumber", "SizeBytes", "StreamViewType"}, r
    assert r["dynamodb"]["Keys"] == k and r["dynamodb"]["StreamViewType"] == "KEYS_ONLY"
# Each table's stream has its own records only.
assert all(r["dynamodb"]["Keys"]["pk"]["S"] != "k1" for r in drain(iterator(arn))[0])

# --- UpdateTable enables (and disables) a stream --------------------------------
create("late")
client.put_item(TableName="late", Item={"pk": {"S": "before"}})
time.sleep(0.01)  # the stream takes the writes from its enabling on, to the millisecond
assert streams.list_streams(TableName="late")["Streams"] == []
up = client.update_table(TableName="late", StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
up = up["TableDescription"]
assert up["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}, up
late_arn = up["LatestStreamArn"]
client.put_item(TableName="late", Item={"pk": {"S": "after"}, "v": {"S": "x"}})
lr, _ = drain(iterator(late_arn))
assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in lr] == [("INSERT", "after")], lr
assert lr[0]["dynamodb"]["NewImage"] == {"pk": {"S": "after"}, "v": {"S": "x"}} and "OldImage" not in lr[0]["dynamodb"]
expect_error(
    lambda: client.update_table(TableName="late", StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}),
    "ValidationException",
)
client.update_table(TableName="late", StreamSpecification={"StreamEnabled": False})
assert streams.list_streams(TableName="late")["Streams"] == []
assert "LatestStreamArn" not in client.describe_table(TableName="late")["Table"]
expect_error(lambda: streams.describe_stream(StreamArn=late_arn), "ResourceNotFoundException")
expect_error(lambda: client.update_table(TableName="late", StreamSpecification={"StreamEnabled": False}), "ValidationException")
expect_error(lambda: client.update_table(TableName="late", ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}), "ValidationException")

# --- TTL deletes name the service ---------------------------------------------
create("expiring", "NEW_AND_OLD_IMAGES")
client.update_time_to_live(TableName="expiring", TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
client.put_item(TableName="expiring", Item={"pk": {"S": "gone"}, "exp": {"N": str(int(time.time()) - 10)}})
exp_arn = client.describe_table(TableName="expiring")["Table"]["LatestStreamArn"]
deadline = time.time() + 20
while True:
    er, _ = drain(iterator(exp_arn))
    if len(er) >= 2 or time.time() > deadline:
        break
    time.sleep(0.2)
assert [r["eventName"] for r in er] == ["INSERT", "REMOVE"], er
assert "userIdentity" not in er[0]
assert er[1]["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}, er[1]
assert er[1]["dynamodb"]["OldImage"]["pk"] == {"S": "gone"}

print("all checks passed")
