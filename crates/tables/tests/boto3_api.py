"""boto3 against one lifeboat table server, as an AWS user's code would call DynamoDB.

Run by crates/tables/tests/api.rs with ENDPOINT, KEY_ID and SECRET in the
environment; every check is an assert (a failure exits non-zero with the traceback).
"""

import json
import os
import time
import urllib.request
from decimal import Decimal

import boto3
import botocore
from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
KW = dict(
    endpoint_url=ENDPOINT,
    region_name="a",
    aws_access_key_id=os.environ["KEY_ID"],
    aws_secret_access_key=os.environ["SECRET"],
    config=botocore.config.Config(retries={"max_attempts": 1}),
)
client = boto3.client("dynamodb", **KW)
ddb = boto3.resource("dynamodb", **KW)


def code(e):
    return e.response["Error"]["Code"]


def expect_error(fn, want, contains=None):
    try:
        fn()
    except ClientError as e:
        assert code(e) == want, (code(e), e.response["Error"].get("Message"))
        if contains:
            msg = e.response["Error"].get("Message", "")
            assert contains in msg, msg
        return e
    raise AssertionError(f"expected {want}, got no error")


# --- tables ---------------------------------------------------------------
table = ddb.create_table(
    TableName="orders",
    KeySchema=[
        {"AttributeName": "customer", "KeyType": "HASH"},
        {"AttributeName": "order", "KeyType": "RANGE"},
    ],
    AttributeDefinitions=[
        {"AttributeName": "customer", "AttributeType": "S"},
        {"AttributeName": "order", "AttributeType": "N"},
    ],
    BillingMode="PAY_PER_REQUEST",
)
table.wait_until_exists()
assert table.table_status == "ACTIVE"
assert [k["AttributeName"] for k in table.key_schema] == ["customer", "order"]
expect_error(
    lambda: client.create_table(
        TableName="orders",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    ),
    "ResourceInUseException",
)
simple = ddb.create_table(
    TableName="sessions",
    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)
simple.wait_until_exists()
assert set(client.list_tables()["TableNames"]) == {"orders", "sessions"}
page = client.list_tables(Limit=1)
assert page["TableNames"] == ["orders"] and page["LastEvaluatedTableName"] == "orders"
expect_error(lambda: client.describe_table(TableName="nope"), "ResourceNotFoundException")

# --- CRUD, every type ------------------------------------------------------
item = {
    "customer": "ada",
    "order": 1,
    "total": Decimal("12.3400"),
    "big": Decimal("12345678901234567890123456789.012345678"),
    "note": "",
    "paid": True,
    "gift": None,
    "lines": [{"sku": "x1", "qty": 2}, "loose"],
    "tags": {"red", "blue"},
    "sizes": {Decimal(1), Decimal(2)},
    "blob": b"\x00\x01\xff",
    "blobs": {b"a", b"b"},
    "nested": {"a": {"b": {"c": [1, 2, {"d": "deep"}]}}},
}
table.put_item(Item=item)
got = table.get_item(Key={"customer": "ada", "order": 1})["Item"]
assert got["total"] == Decimal("12.34"), got["total"]
assert got["big"] == Decimal("12345678901234567890123456789.012345678"), got["big"]
assert got["note"] == "" and got["paid"] is True and got["gift"] is None
assert got["lines"][0]["qty"] == 2 and got["lines"][1] == "loose"
assert got["tags"] == {"red", "blue"} and got["sizes"] == {1, 2}
assert got["blob"].value == b"\x00\x01\xff"
assert {b.value for b in got["blobs"]} == {b"a", b"b"}
assert got["nested"]["a"]["b"]["c"][2]["d"] == "deep"
proj = table.get_item(
    Key={"customer": "ada", "order": 1},
    ProjectionExpression="#t, nested.a.b.c[2]",
    ExpressionAttributeNames={"#t": "total"},
)["Item"]
assert proj == {"total": Decimal("12.34"), "nested": {"a": {"b": {"c": [{"d": "deep"}]}}}}, proj
assert "Item" not in table.get_item(Key={"customer": "ada", "order": 999})

# conditional put failing with ConditionalCheckFailedException
try:
    table.put_item(Item={"customer": "ada", "order": 1}, ConditionExpression=Attr("customer").not_exists())
    raise AssertionError("the conditional put succeeded")
except client.exceptions.ConditionalCheckFailedException as e:
    assert "conditional request failed" in str(e)
table.put_item(Item={"customer": "ada", "order": 2, "total": 5}, ConditionExpression="attribute_not_exists(customer)")
old = table.put_item(Item={"customer": "ada", "order": 2, "total": 6}, ReturnValues="ALL_OLD")["Attributes"]
assert old["total"] == 5

# UpdateItem expressions
r = table.update_item(
    Key={"customer": "ada", "order": 2},
    UpdateExpression="SET #t = #t + :inc, visits = if_not_exists(visits, :zero) + :one, "
    "hist = list_append(if_not_exists(hist, :empty), :h) REMOVE gone ADD tags :tag",
    ExpressionAttributeNames={"#t": "total"},
    ExpressionAttributeValues={":inc": Decimal("0.5"), ":zero": 0, ":one": 1, ":empty": [], ":h": ["created"], ":tag": {"new"}},
    ReturnValues="ALL_NEW",
)["Attributes"]
assert r["total"] == Decimal("6.5") and r["visits"] == 1 and r["hist"] == ["created"] and r["tags"] == {"new"}, r
r = table.update_item(
    Key={"customer": "ada", "order": 2},
    UpdateExpression="ADD visits :one DELETE tags :tag",
    ConditionExpression="visits = :one AND begins_with(hist[0], :c)",
    ExpressionAttributeValues={":one": 1, ":tag": {"new"}, ":c": "cre"},
    ReturnValues="UPDATED_NEW",
)["Attributes"]
assert r == {"visits": 2}, r
expect_error(
    lambda: table.update_item(
        Key={"customer": "ada", "order": 2},
        UpdateExpression="SET visits = :v",
        ConditionExpression="visits > :v",
        ExpressionAttributeValues={":v": 100},
    ),
    "ConditionalCheckFailedException",
)
expect_error(
    lambda: table.update_item(Key={"customer": "ada", "order": 2}, UpdateExpression="SET #o = :v",
                              ExpressionAttributeNames={"#o": "order"}, ExpressionAttributeValues={":v": 3}),
    "ValidationException",
    "part of the key",
)
# an update of a missing item creates it
# "total" is one of DynamoDB's reserved words: refused bare, taken as a placeholder
expect_error(
    lambda: table.update_item(Key={"customer": "bob", "order": 1}, UpdateExpression="SET total = :t", ExpressionAttributeValues={":t": 1}),
    "ValidationException",
    "reserved keyword: total",
)
table.update_item(Key={"customer": "bob", "order": 1}, UpdateExpression="SET #t = :t",
                  ExpressionAttributeNames={"#t": "total"}, ExpressionAttributeValues={":t": 1})
assert table.get_item(Key={"customer": "bob", "order": 1})["Item"]["total"] == 1

# delete, conditional delete
expect_error(
    lambda: table.delete_item(Key={"customer": "bob", "order": 1}, ConditionExpression="#t = :x",
                              ExpressionAttributeNames={"#t": "total"}, ExpressionAttributeValues={":x": 2}),
    "ConditionalCheckFailedException",
)
old = table.delete_item(Key={"customer": "bob", "order": 1}, ReturnValues="ALL_OLD")["Attributes"]
assert old["total"] == 1
assert "Item" not in table.get_item(Key={"customer": "bob", "order": 1})

# --- BatchWriteItem, Query and Scan paging through 5,000 items ----------------
with table.batch_writer() as batch:
    for i in range(5000):
        batch.put_item(Item={"customer": "carol", "order": i, "even": i % 2 == 0, "pad": "x" * 100})
n = 0
seen = []
kw = dict(KeyConditionExpression=Key("customer").eq("carol"), Limit=700)
while True:
    page = table.query(**kw)
    seen.extend(int(i["order"]) for i in page["Items"])
    n += 1
    if "LastEvaluatedKey" not in page:
        break
    kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
assert seen == list(range(5000)), (len(seen), seen[:5])
assert n >= 8, n
# the paginator, backwards, with a filter and a range condition
pag = client.get_paginator("query")
orders = []
for page in pag.paginate(
    TableName="orders",
    KeyConditionExpression="customer = :c AND #o BETWEEN :lo AND :hi",
    FilterExpression="even = :t",
    ExpressionAttributeNames={"#o": "order"},
    ExpressionAttributeValues={":c": {"S": "carol"}, ":lo": {"N": "100"}, ":hi": {"N": "199"}, ":t": {"BOOL": True}},
    ScanIndexForward=False,
    PaginationConfig={"PageSize": 30},
):
    orders.extend(int(i["order"]["N"]) for i in page["Items"])
assert orders == list(range(198, 99, -2)), orders
for cond, want in [
    (Key("customer").eq("carol") & Key("order").lt(3), [0, 1, 2]),
    (Key("customer").eq("carol") & Key("order").lte(2), [0, 1, 2]),
    (Key("customer").eq("carol") & Key("order").gt(4997), [4998, 4999]),
    (Key("customer").eq("carol") & Key("order").gte(4998), [4998, 4999]),
    (Key("customer").eq("carol") & Key("order").eq(42), [42]),
]:
    got = [int(i["order"]) for i in table.query(KeyConditionExpression=cond)["Items"]]
    assert got == want, (got, want)
count = table.query(KeyConditionExpression=Key("customer").eq("carol"), Select="COUNT")
assert count["Count"] == 5000 and "Items" not in count, count["Count"]
expect_error(lambda: table.query(KeyConditionExpression=Key("order").eq(1)), "ValidationException")

# Scan, paged and in parallel segments
scanned = []
kw = dict(Limit=999, FilterExpression=Attr("customer").eq("carol"))
while True:
    page = table.scan(**kw)
    scanned.extend(int(i["order"]) for i in page["Items"])
    if "LastEvaluatedKey" not in page:
        break
    kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
assert sorted(scanned) == list(range(5000)), len(scanned)
segs = []
for s in range(4):
    kw = dict(Segment=s, TotalSegments=4)
    while True:
        page = table.scan(**kw)
        segs.extend((i["customer"], int(i["order"])) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
assert len(segs) == len(set(segs)) == 5002, len(segs)  # carol's 5000 + ada's 2

# BatchGetItem and BatchWriteItem with deletes
r = ddb.batch_get_item(RequestItems={"orders": {"Keys": [{"customer": "carol", "order": i} for i in (1, 2, 3)] + [{"customer": "nobody", "order": 1}]}})
assert sorted(int(i["order"]) for i in r["Responses"]["orders"]) == [1, 2, 3]
client.batch_write_item(RequestItems={"orders": [{"DeleteRequest": {"Key": {"customer": {"S": "carol"}, "order": {"N": str(i)}}}} for i in range(10)]})
assert table.query(KeyConditionExpression=Key("customer").eq("carol"), Select="COUNT")["Count"] == 4990
expect_error(
    lambda: client.batch_write_item(RequestItems={"orders": [{"PutRequest": {"Item": {"customer": {"S": "x"}, "order": {"N": str(i)}}}} for i in range(26)]}),
    "ValidationException",
)

# --- TTL expiry ---------------------------------------------------------------
client.update_time_to_live(TableName="sessions", TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
assert client.describe_time_to_live(TableName="sessions")["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires"}
now = int(time.time())
simple.put_item(Item={"id": "old", "expires": now - 10})
simple.put_item(Item={"id": "fresh", "expires": now + 3600})
simple.put_item(Item={"id": "forever"})
deadline = time.time() + 20
while "Item" in simple.get_item(Key={"id": "old"}):
    assert time.time() < deadline, "an expired item was never deleted"
    time.sleep(0.1)
assert "Item" in simple.get_item(Key={"id": "fresh"}) and "Item" in simple.get_item(Key={"id": "forever"})

# --- bad input gets DynamoDB's error ------------------------------------------
e = expect_error(
    lambda: table.query(KeyConditionExpression="customer = :c AND AND", ExpressionAttributeValues={":c": {"S": "a"}}),
    "ValidationException",
    "Syntax error",
)
assert "near" in e.response["Error"]["Message"], e.response["Error"]["Message"]
expect_error(lambda: table.put_item(Item={"customer": "big", "order": 1, "blob": b"x" * (400 * 1024)}), "ValidationException", "maximum allowed size")
expect_error(lambda: table.put_item(Item={"customer": "", "order": 1}), "ValidationException", "empty")
expect_error(lambda: table.put_item(Item={"order": 1}), "ValidationException", "Missing the key customer")
expect_error(lambda: table.get_item(Key={"customer": "ada"}), "ValidationException", "does not match the schema")
expect_error(
    lambda: table.get_item(Key={"customer": "ada", "order": 1}, ProjectionExpression="#a", ExpressionAttributeNames={"#a": "x", "#b": "y"}),
    "ValidationException",
    "unused",
)
expect_error(
    lambda: table.scan(FilterExpression="status = :s", ExpressionAttributeValues={":s": "x"}),
    "ValidationException",
    "reserved keyword",
)
bad = boto3.client("dynamodb", **{**KW, "aws_secret_access_key": "wrong"})
expect_error(lambda: bad.list_tables(), "InvalidSignatureException")
unknown = boto3.client("dynamodb", **{**KW, "aws_access_key_id": "AKIDUNKNOWN"})
expect_error(lambda: unknown.list_tables(), "UnrecognizedClientException")


def raw(target, body):
    # A signed request with a body of our choosing (botocore's signer, our bytes).
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body,
                     headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.0"})
    SigV4Auth(Credentials(os.environ["KEY_ID"], os.environ["SECRET"]), "dynamodb", "a").add_auth(req)
    r = urllib.request.Request(ENDPOINT + "/", data=body, headers=dict(req.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


status, body = raw("DynamoDB_20120810.ListTables", b"{not json")
assert status == 400 and body["__type"].endswith("#SerializationException"), (status, body)
status, body = raw("DynamoDB_20120810.FlyToTheMoon", b"{}")
assert status == 400 and body["__type"].endswith("#UnknownOperationException"), (status, body)

# --- delete a table -------------------------------------------------------------
simple.delete()
simple.wait_until_not_exists()
assert client.list_tables()["TableNames"] == ["orders"]
print("boto3: all checks passed")
