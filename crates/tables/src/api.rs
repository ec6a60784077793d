//! DynamoDB's operations (`X-Amz-Target: DynamoDB_20120810.<Op>`) on a region's
//! [`Store`]: request JSON in, response JSON out, DynamoDB's errors
//! (docs/tables.md, "The API").

use crate::error::ApiError;
use crate::expr::{
    self, Condition, KeyCondition, Names, RangeCond, Used, Values, parse_condition,
    parse_key_condition, parse_projection, parse_update, project,
};
use crate::store::{Action, ItemWrite, KeyAttr, RangeBytes, Store, TableDef, segment_hash};
use crate::value::{AttributeValue, Item, ValueType, item_from_json, item_to_json, key_bytes};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The account in ARNs (lifeboat has no accounts).
pub const ACCOUNT: &str = "000000000000";
/// The most items of one BatchWriteItem, and keys of one BatchGetItem.
pub const BATCH_WRITE_MAX: usize = 25;
pub const BATCH_GET_MAX: usize = 100;
/// No Limit: a page ends at 1 MB only.
const NO_LIMIT: usize = 1 << 40;

/// Run operation `op` with request `req`.
pub async fn handle(store: &Arc<Store>, op: &str, req: &Value) -> Result<Value, ApiError> {
    if !req.is_object() {
        return Err(ApiError::serialization(
            "the request body must be a JSON object",
        ));
    }
    match op {
        "CreateTable" => create_table(store, req).await,
        "DescribeTable" => {
            let def = store.table(table_name(req)?)?;
            Ok(json!({ "Table": describe(store, &def, "ACTIVE").await? }))
        }
        "ListTables" => list_tables(store, req),
        "DeleteTable" => {
            let def = store.delete_table(table_name(req)?).await?;
            let mut d = describe_def(store, &def, "DELETING");
            d["ItemCount"] = json!(0);
            d["TableSizeBytes"] = json!(0);
            Ok(json!({ "TableDescription": d }))
        }
        "UpdateTimeToLive" => update_ttl(store, req).await,
        "UpdateTable" => update_table(store, req).await,
        "DescribeTimeToLive" => {
            let def = store.table(table_name(req)?)?;
            Ok(json!({ "TimeToLiveDescription": match &def.ttl_attribute {
                Some(a) => json!({"TimeToLiveStatus": "ENABLED", "AttributeName": a}),
                None => json!({"TimeToLiveStatus": "DISABLED"}),
            }}))
        }
        "PutItem" => put_item(store, req).await,
        "GetItem" => get_item(store, req).await,
        "DeleteItem" => delete_item(store, req).await,
        "UpdateItem" => update_item(store, req).await,
        "Query" => query(store, req).await,
        "Scan" => scan(store, req).await,
        "BatchWriteItem" => batch_write(store, req).await,
        "BatchGetItem" => batch_get(store, req).await,
        "DescribeEndpoints" => {
            Ok(json!({"Endpoints": [{"Address": "", "CachePeriodInMinutes": 1440}]}))
        }
        other => Err(ApiError::unknown_operation(format!(
            "the operation {other:?} is not one lifeboat's table server knows"
        ))),
    }
}

fn validation_null(field: &str) -> ApiError {
    let mut f = field.to_owned();
    if let Some(c) = f.get(..1) {
        let lower = c.to_lowercase();
        f.replace_range(..1, &lower);
    }
    ApiError::validation(format!(
        "1 validation error detected: Value null at '{f}' failed to satisfy constraint: Member must not be null"
    ))
}

fn table_name(req: &Value) -> Result<&str, ApiError> {
    let name = req
        .get("TableName")
        .and_then(Value::as_str)
        .ok_or_else(|| validation_null("TableName"))?;
    check_table_name(name)?;
    Ok(name)
}

fn check_table_name(name: &str) -> Result<(), ApiError> {
    if name.len() < 3 || name.len() > 255 {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at 'tableName' failed to satisfy constraint: Member must have length between 3 and 255"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at 'tableName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )));
    }
    Ok(())
}

fn opt_str<'a>(req: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::serialization(format!(
            "{field} must be a string, not {other}"
        ))),
    }
}

fn opt_bool(req: &Value, field: &str) -> Result<Option<bool>, ApiError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::serialization(format!(
            "{field} must be true or false, not {other}"
        ))),
    }
}

fn item_field(req: &Value, field: &str) -> Result<Item, ApiError> {
    let v = req.get(field).ok_or_else(|| validation_null(field))?;
    Ok(item_from_json(v)?)
}

/// Refuse a legacy (pre-expression) parameter, saying what to use.
fn no_legacy(req: &Value, pairs: &[(&str, &str)]) -> Result<(), ApiError> {
    for (legacy, modern) in pairs {
        if req.get(*legacy).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::validation(format!(
                "the legacy parameter {legacy} is not supported by lifeboat's table server: use {modern}"
            )));
        }
    }
    Ok(())
}

/// ExpressionAttributeNames and ExpressionAttributeValues of a request.
fn placeholders(req: &Value) -> Result<(Names, Values), ApiError> {
    let mut names = Names::new();
    if let Some(v) = req.get("ExpressionAttributeNames").filter(|v| !v.is_null()) {
        let m = v
            .as_object()
            .ok_or_else(|| ApiError::serialization("ExpressionAttributeNames must be a map"))?;
        if m.is_empty() {
            return Err(ApiError::validation(
                "ExpressionAttributeNames must not be empty",
            ));
        }
        for (k, v) in m {
            let name = v.as_str().ok_or_else(|| {
                ApiError::serialization(format!("ExpressionAttributeNames {k} must be a string"))
            })?;
            names.insert(k.clone(), name.to_owned());
        }
    }
    let mut values = Values::new();
    if let Some(v) = req
        .get("ExpressionAttributeValues")
        .filter(|v| !v.is_null())
    {
        let m = v
            .as_object()
            .ok_or_else(|| ApiError::serialization("ExpressionAttributeValues must be a map"))?;
        if m.is_empty() {
            return Err(ApiError::validation(
                "ExpressionAttributeValues must not be empty",
            ));
        }
        for (k, v) in m {
            let value = AttributeValue::from_json(v).map_err(|e| {
                ApiError::validation(format!(
                    "ExpressionAttributeValues contains invalid value: {e} for key {k}"
                ))
            })?;
            values.insert(k.clone(), value);
        }
    }
    Ok((names, values))
}

/// DynamoDB refuses placeholders that no expression of the request used.
fn check_unused(names: &Names, values: &Values, used: &Used) -> Result<(), ApiError> {
    let unused: BTreeSet<&String> = values
        .keys()
        .filter(|k| !used.values.contains(*k))
        .collect();
    if !unused.is_empty() {
        return Err(ApiError::validation(format!(
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
            unused.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let unused: BTreeSet<&String> = names.keys().filter(|k| !used.names.contains(*k)).collect();
    if !unused.is_empty() {
        return Err(ApiError::validation(format!(
            "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
            unused.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

fn condition(
    req: &Value,
    field: &str,
    names: &Names,
    values: &Values,
    used: &mut Used,
) -> Result<Option<Condition>, ApiError> {
    opt_str(req, field)?
        .map(|text| parse_condition(text, field, names, values, used))
        .transpose()
        .map_err(ApiError::from)
}

fn projection(
    req: &Value,
    names: &Names,
    used: &mut Used,
) -> Result<Option<Vec<expr::Path>>, ApiError> {
    no_legacy(req, &[("AttributesToGet", "ProjectionExpression")])?;
    opt_str(req, "ProjectionExpression")?
        .map(|text| parse_projection(text, names, used))
        .transpose()
        .map_err(ApiError::from)
}

fn consumed(req: &Value, table: &str, out: &mut Value) {
    if matches!(
        req.get("ReturnConsumedCapacity").and_then(Value::as_str),
        Some("TOTAL" | "INDEXES")
    ) {
        out["ConsumedCapacity"] = json!({"TableName": table, "CapacityUnits": 1.0});
    }
}

fn return_values<'a>(req: &'a Value, allowed: &[&str]) -> Result<&'a str, ApiError> {
    let rv = opt_str(req, "ReturnValues")?.unwrap_or("NONE");
    if !allowed.contains(&rv) {
        return Err(ApiError::validation(format!(
            "Return values set to invalid value: {rv} (this operation takes {})",
            allowed.join(", ")
        )));
    }
    Ok(rv)
}

fn old_on_failure(req: &Value) -> Result<bool, ApiError> {
    match opt_str(req, "ReturnValuesOnConditionCheckFailure")? {
        None | Some("NONE") => Ok(false),
        Some("ALL_OLD") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "ReturnValuesOnConditionCheckFailure set to invalid value: {other} (NONE or ALL_OLD)"
        ))),
    }
}

async fn create_table(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    for unsupported in ["GlobalSecondaryIndexes", "LocalSecondaryIndexes"] {
        if req.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::validation(format!(
                "{unsupported}: lifeboat's global tables have no secondary indexes yet"
            )));
        }
    }
    let schema = req
        .get("KeySchema")
        .and_then(Value::as_array)
        .ok_or_else(|| validation_null("KeySchema"))?;
    let defs = req
        .get("AttributeDefinitions")
        .and_then(Value::as_array)
        .ok_or_else(|| validation_null("AttributeDefinitions"))?;
    let mut types = std::collections::BTreeMap::new();
    for d in defs {
        let n = d.get("AttributeName").and_then(Value::as_str);
        let t = d.get("AttributeType").and_then(Value::as_str);
        match (n, t) {
            (Some(n), Some(t @ ("S" | "N" | "B"))) => {
                types.insert(n.to_owned(), t.to_owned());
            }
            (Some(n), Some(t)) => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{t}' at 'attributeDefinitions.{n}.attributeType' failed to satisfy constraint: Member must satisfy enum value set: [B, N, S]"
                )));
            }
            _ => {
                return Err(ApiError::validation(
                    "every AttributeDefinitions entry needs AttributeName and AttributeType",
                ));
            }
        }
    }
    let mut hash = None;
    let mut range = None;
    for k in schema {
        let n = k.get("AttributeName").and_then(Value::as_str).unwrap_or("");
        let ty = types.get(n).cloned().ok_or_else(|| {
            ApiError::validation(format!(
                "One or more parameter values were invalid: Some index key attribute have no definition (KeySchema names {n:?}, which AttributeDefinitions does not define)"
            ))
        })?;
        let attr = KeyAttr {
            name: n.to_owned(),
            ty,
        };
        match k.get("KeyType").and_then(Value::as_str) {
            Some("HASH") if hash.is_none() => hash = Some(attr),
            Some("RANGE") if range.is_none() && hash.is_some() => range = Some(attr),
            _ => {
                return Err(ApiError::validation(
                    "Invalid KeySchema: the first KeySchema element must be the HASH key, and an optional second one the RANGE key",
                ));
            }
        }
    }
    let hash = hash.ok_or_else(|| ApiError::validation("Invalid KeySchema: no HASH key"))?;
    let n_keys = 1 + usize::from(range.is_some());
    if types.len() != n_keys {
        return Err(ApiError::validation(
            "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions",
        ));
    }
    let stream_view = stream_spec(req)?.flatten();
    let created_ms = crate::store::now_ms();
    let def = TableDef {
        name: name.to_owned(),
        hash,
        range,
        created_ms,
        ttl_attribute: None,
        stream_view,
        stream_enabled_ms: None,
        id: table_id(name, created_ms),
    };
    let def = store.create_table(def).await?;
    Ok(json!({ "TableDescription": describe_def(store, &def, "ACTIVE") }))
}

/// The request's StreamSpecification: None if absent; Some(None): streams disabled;
/// Some(Some(view)): enabled with that StreamViewType.
fn stream_spec(req: &Value) -> Result<Option<Option<String>>, ApiError> {
    let Some(spec) = req.get("StreamSpecification").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if !opt_bool(spec, "StreamEnabled")?.unwrap_or(false) {
        return Ok(Some(None));
    }
    let view = opt_str(spec, "StreamViewType")?.unwrap_or("");
    if !matches!(
        view,
        "KEYS_ONLY" | "NEW_IMAGE" | "OLD_IMAGE" | "NEW_AND_OLD_IMAGES"
    ) {
        return Err(ApiError::validation(format!(
            "StreamViewType {view:?}: use KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES"
        )));
    }
    Ok(Some(Some(view.to_owned())))
}

/// UpdateTable: enable or disable the table's stream (StreamSpecification, which
/// reaches the other regions as an UPDATE_TABLE change). BillingMode
/// PAY_PER_REQUEST is taken as it is; nothing else of a table can change yet.
async fn update_table(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    store.table(name)?;
    for (field, v) in req.as_object().into_iter().flatten() {
        match field.as_str() {
            "TableName" | "StreamSpecification" => {}
            "BillingMode" if v.as_str() == Some("PAY_PER_REQUEST") => {}
            _ if v.is_null() => {}
            other => {
                return Err(ApiError::validation(format!(
                    "UpdateTable {other}: lifeboat's tables can change only their StreamSpecification yet"
                )));
            }
        }
    }
    let Some(view) = stream_spec(req)? else {
        return Err(ApiError::validation(
            "UpdateTable: nothing to change (lifeboat's tables can change only their StreamSpecification yet)",
        ));
    };
    let def = store.set_stream(name, view).await?;
    Ok(json!({ "TableDescription": describe(store, &def, "ACTIVE").await? }))
}

/// A table's id: a UUID-shaped hash of its name and creation time.
fn table_id(name: &str, created_ms: i64) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{name}/{created_ms}").as_bytes());
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn arn(store: &Store, def: &TableDef) -> String {
    format!(
        "arn:aws:dynamodb:{}:{ACCOUNT}:table/{}",
        store.region(),
        def.name
    )
}

/// The stream's label: when it was enabled (the table's creation, or UpdateTable's),
/// as DynamoDB labels streams.
pub fn stream_label(def: &TableDef) -> String {
    let at = def.stream_enabled_ms.unwrap_or(def.created_ms);
    let secs = at.div_euclid(1000);
    let ms = at.rem_euclid(1000);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}")
}

pub fn stream_arn(store: &Store, def: &TableDef) -> String {
    format!("{}/stream/{}", arn(store, def), stream_label(def))
}

/// (year, month, day, hour, minute, second) of Unix time `secs` (UTC).
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 { y + 1 } else { y },
        m,
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

fn describe_def(store: &Store, def: &TableDef, status: &str) -> Value {
    let mut schema = vec![json!({"AttributeName": def.hash.name, "KeyType": "HASH"})];
    let mut attrs = vec![json!({"AttributeName": def.hash.name, "AttributeType": def.hash.ty})];
    if let Some(r) = &def.range {
        schema.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
        attrs.push(json!({"AttributeName": r.name, "AttributeType": r.ty}));
    }
    let mut d = json!({
        "TableName": def.name,
        "TableStatus": status,
        "KeySchema": schema,
        "AttributeDefinitions": attrs,
        "CreationDateTime": def.created_ms as f64 / 1000.0,
        "ItemCount": 0,
        "TableSizeBytes": 0,
        "TableArn": arn(store, def),
        "TableId": def.id,
        "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
        "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0, "NumberOfDecreasesToday": 0},
        "DeletionProtectionEnabled": false,
    });
    if let Some(view) = &def.stream_view {
        d["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": view});
        d["LatestStreamLabel"] = json!(stream_label(def));
        d["LatestStreamArn"] = json!(stream_arn(store, def));
    }
    d
}

async fn describe(store: &Arc<Store>, def: &TableDef, status: &str) -> Result<Value, ApiError> {
    let mut d = describe_def(store, def, status);
    let (count, bytes) = store.table_size(&def.name).await?;
    d["ItemCount"] = json!(count);
    d["TableSizeBytes"] = json!(bytes);
    Ok(d)
}

fn list_tables(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let start = opt_str(req, "ExclusiveStartTableName")?;
    let limit = match req.get("Limit").filter(|v| !v.is_null()) {
        None => 100,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=100) => n as usize,
            _ => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{v}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 100"
                )));
            }
        },
    };
    let names: Vec<String> = store
        .table_names()
        .into_iter()
        .filter(|n| start.is_none_or(|s| n.as_str() > s))
        .collect();
    let more = names.len() > limit;
    let page: Vec<String> = names.into_iter().take(limit).collect();
    let mut out = json!({ "TableNames": page });
    if more && let Some(last) = page.last() {
        out["LastEvaluatedTableName"] = json!(last);
    }
    Ok(out)
}

async fn update_ttl(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    let spec = req
        .get("TimeToLiveSpecification")
        .ok_or_else(|| validation_null("TimeToLiveSpecification"))?;
    let enabled = opt_bool(spec, "Enabled")?
        .ok_or_else(|| validation_null("TimeToLiveSpecification.Enabled"))?;
    let attr = opt_str(spec, "AttributeName")?
        .filter(|a| !a.is_empty())
        .ok_or_else(|| validation_null("TimeToLiveSpecification.AttributeName"))?;
    let def = store.table(name)?;
    if !enabled && def.ttl_attribute.as_deref() != Some(attr) {
        return Err(ApiError::validation(format!(
            "TimeToLive is not enabled on attribute {attr:?}"
        )));
    }
    store
        .set_ttl(name, enabled.then(|| attr.to_owned()))
        .await?;
    Ok(json!({"TimeToLiveSpecification": {"Enabled": enabled, "AttributeName": attr}}))
}

async fn put_item(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    no_legacy(req, &[("Expected", "ConditionExpression")])?;
    let def = store.table(name)?;
    let item = item_field(req, "Item")?;
    let (key, _) = def.key_of(&item, false)?;
    let (names, values) = placeholders(req)?;
    let mut used = Used::default();
    let cond = condition(req, "ConditionExpression", &names, &values, &mut used)?;
    check_unused(&names, &values, &used)?;
    let rv = return_values(req, &["NONE", "ALL_OLD"])?;
    let w = ItemWrite {
        table: name.to_owned(),
        key,
        action: Action::Put(item),
        condition: cond.map(Arc::new),
        old_on_failure: old_on_failure(req)?,
    };
    let written = one(store.write(vec![w]).await?)?;
    let mut out = json!({});
    if rv == "ALL_OLD"
        && let Some(old) = &written.old
    {
        out["Attributes"] = item_to_json(old);
    }
    consumed(req, name, &mut out);
    Ok(out)
}

fn one(mut v: Vec<crate::store::Written>) -> Result<crate::store::Written, ApiError> {
    v.pop()
        .ok_or_else(|| ApiError::internal("the writer answered no write"))
}

async fn get_item(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    let def = store.table(name)?;
    let key = item_field(req, "Key")?;
    let (_, kb) = def.key_of(&key, true)?;
    let (names, values) = placeholders(req)?;
    if !values.is_empty() {
        return Err(ApiError::validation(
            "ExpressionAttributeValues can only be specified when using expressions: GetItem takes none that use values",
        ));
    }
    let mut used = Used::default();
    let proj = projection(req, &names, &mut used)?;
    check_unused(&names, &values, &used)?;
    let item = store.get(name, kb).await?;
    let mut out = json!({});
    if let Some(item) = item {
        let item = match &proj {
            Some(p) => project(&item, p),
            None => item,
        };
        out["Item"] = item_to_json(&item);
    }
    consumed(req, name, &mut out);
    Ok(out)
}

async fn delete_item(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    no_legacy(req, &[("Expected", "ConditionExpression")])?;
    let def = store.table(name)?;
    let key = item_field(req, "Key")?;
    def.key_of(&key, true)?;
    let (names, values) = placeholders(req)?;
    let mut used = Used::default();
    let cond = condition(req, "ConditionExpression", &names, &values, &mut used)?;
    check_unused(&names, &values, &used)?;
    let rv = return_values(req, &["NONE", "ALL_OLD"])?;
    let w = ItemWrite {
        table: name.to_owned(),
        key,
        action: Action::Delete,
        condition: cond.map(Arc::new),
        old_on_failure: old_on_failure(req)?,
    };
    let written = one(store.write(vec![w]).await?)?;
    let mut out = json!({});
    if rv == "ALL_OLD"
        && let Some(old) = &written.old
    {
        out["Attributes"] = item_to_json(old);
    }
    consumed(req, name, &mut out);
    Ok(out)
}

async fn update_item(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    no_legacy(
        req,
        &[
            ("Expected", "ConditionExpression"),
            ("AttributeUpdates", "UpdateExpression"),
        ],
    )?;
    let def = store.table(name)?;
    let key = item_field(req, "Key")?;
    def.key_of(&key, true)?;
    let (names, values) = placeholders(req)?;
    let mut used = Used::default();
    let update = opt_str(req, "UpdateExpression")?
        .map(|t| parse_update(t, &names, &values, &mut used))
        .transpose()?;
    let cond = condition(req, "ConditionExpression", &names, &values, &mut used)?;
    check_unused(&names, &values, &used)?;
    let touched = update
        .as_ref()
        .map(|u| u.top_level_names())
        .unwrap_or_default();
    for k in def.key_names() {
        if touched.contains(k) {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Cannot update attribute {k}. This attribute is part of the key"
            )));
        }
    }
    let rv = return_values(
        req,
        &["NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"],
    )?;
    let w = ItemWrite {
        table: name.to_owned(),
        key,
        action: Action::Update(update.map(Arc::new)),
        condition: cond.map(Arc::new),
        old_on_failure: old_on_failure(req)?,
    };
    let written = one(store.write(vec![w]).await?)?;
    let pick = |item: &Option<Item>| -> Option<Item> {
        item.as_ref().map(|i| {
            i.iter()
                .filter(|(k, _)| touched.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    };
    let attrs = match rv {
        "ALL_OLD" => written.old.clone(),
        "ALL_NEW" => written.new.clone(),
        "UPDATED_OLD" => pick(&written.old),
        "UPDATED_NEW" => pick(&written.new),
        _ => None,
    };
    let mut out = json!({});
    if let Some(a) = attrs.filter(|a| !a.is_empty()) {
        out["Attributes"] = item_to_json(&a);
    }
    consumed(req, name, &mut out);
    Ok(out)
}

/// Limit, if given: a positive integer.
fn limit(req: &Value) -> Result<Option<usize>, ApiError> {
    match req.get("Limit").filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(ApiError::validation(format!(
                "1 validation error detected: Value '{v}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
            ))),
        },
    }
}

/// The successor of `prefix` in byte order (the first value not starting with it),
/// or None if every value ≥ prefix starts with it.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

fn range_bytes(def: &TableDef, kc: &KeyCondition) -> Result<RangeBytes, ApiError> {
    let Some((name, cond)) = &kc.range else {
        return Ok(RangeBytes::default());
    };
    let Some(r) = &def.range else {
        return Err(ApiError::validation(format!(
            "Query condition missed key schema element: {name} is not a key of table {}",
            def.name
        )));
    };
    if *name != r.name {
        return Err(ApiError::validation(format!(
            "Query condition missed key schema element: {}",
            r.name
        )));
    }
    let ty = r.value_type();
    let b = |v: &AttributeValue| -> Result<Vec<u8>, ApiError> {
        if v.value_type() != ty {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Condition parameter type does not match schema type (key {} is {}, the value is {})",
                r.name,
                r.ty,
                v.value_type()
            )));
        }
        key_bytes(v).ok_or_else(|| ApiError::validation("a key value must be S, N or B"))
    };
    Ok(match cond {
        RangeCond::Eq(v) => {
            let x = b(v)?;
            RangeBytes {
                lower: Some((x.clone(), true)),
                upper: Some((x, true)),
            }
        }
        RangeCond::Lt(v) => RangeBytes {
            lower: None,
            upper: Some((b(v)?, false)),
        },
        RangeCond::Le(v) => RangeBytes {
            lower: None,
            upper: Some((b(v)?, true)),
        },
        RangeCond::Gt(v) => RangeBytes {
            lower: Some((b(v)?, false)),
            upper: None,
        },
        RangeCond::Ge(v) => RangeBytes {
            lower: Some((b(v)?, true)),
            upper: None,
        },
        RangeCond::Between(lo, hi) => {
            let (l, h) = (b(lo)?, b(hi)?);
            if l > h {
                return Err(ApiError::validation(format!(
                    "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound operand: AttributeValue: {}, upper bound operand: AttributeValue: {}",
                    lo.to_json(),
                    hi.to_json()
                )));
            }
            RangeBytes {
                lower: Some((l, true)),
                upper: Some((h, true)),
            }
        }
        RangeCond::BeginsWith(v) => {
            if ty == ValueType::N {
                return Err(ApiError::validation(
                    "Invalid KeyConditionExpression: Incorrect operand type for operator or function; operator or function: begins_with, operand type: N",
                ));
            }
            let p = b(v)?;
            RangeBytes {
                upper: prefix_end(&p).map(|e| (e, false)),
                lower: Some((p, true)),
            }
        }
    })
}

/// Select: ALL_ATTRIBUTES (default), COUNT, SPECIFIC_ATTRIBUTES (with a projection).
fn select(req: &Value, has_projection: bool) -> Result<&str, ApiError> {
    let s = opt_str(req, "Select")?.unwrap_or(if has_projection {
        "SPECIFIC_ATTRIBUTES"
    } else {
        "ALL_ATTRIBUTES"
    });
    match s {
        "ALL_ATTRIBUTES" | "COUNT" | "SPECIFIC_ATTRIBUTES" => {
            if has_projection && s != "SPECIFIC_ATTRIBUTES" {
                return Err(ApiError::validation(format!(
                    "Cannot specify the ProjectionExpression when choosing to get {s}"
                )));
            }
            Ok(s)
        }
        "ALL_PROJECTED_ATTRIBUTES" => Err(ApiError::validation(
            "ALL_PROJECTED_ATTRIBUTES can be used only when Querying using an IndexName",
        )),
        other => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'select' failed to satisfy constraint: Member must satisfy enum value set: [SPECIFIC_ATTRIBUTES, COUNT, ALL_ATTRIBUTES, ALL_PROJECTED_ATTRIBUTES]"
        ))),
    }
}

/// Filter, project and count a page; its LastEvaluatedKey from the last item read.
fn finish_page(
    req: &Value,
    def: &TableDef,
    items: Vec<Item>,
    more: bool,
    filter: Option<&Condition>,
    proj: Option<&Vec<expr::Path>>,
    sel: &str,
) -> Result<Value, ApiError> {
    let scanned = items.len();
    let last_key = if more {
        items
            .last()
            .map(|i| def.key_of(i, false).map(|(k, _)| k))
            .transpose()?
    } else {
        None
    };
    let mut kept = Vec::new();
    for item in items {
        if let Some(f) = filter
            && !f.eval(&item)?
        {
            continue;
        }
        kept.push(item);
    }
    let mut out = json!({"Count": kept.len(), "ScannedCount": scanned});
    if sel != "COUNT" {
        out["Items"] = Value::Array(
            kept.iter()
                .map(|i| match proj {
                    Some(p) => item_to_json(&project(i, p)),
                    None => item_to_json(i),
                })
                .collect(),
        );
    }
    if let Some(k) = last_key {
        out["LastEvaluatedKey"] = item_to_json(&k);
    }
    consumed(req, &def.name, &mut out);
    Ok(out)
}

fn no_index(req: &Value) -> Result<(), ApiError> {
    if let Some(i) = opt_str(req, "IndexName")? {
        return Err(ApiError::validation(format!(
            "The table does not have the specified index: {i} (lifeboat's global tables have no secondary indexes yet)"
        )));
    }
    Ok(())
}

async fn query(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    no_legacy(
        req,
        &[
            ("KeyConditions", "KeyConditionExpression"),
            ("QueryFilter", "FilterExpression"),
        ],
    )?;
    no_index(req)?;
    let def = store.table(name)?;
    let (names, values) = placeholders(req)?;
    let mut used = Used::default();
    let text = opt_str(req, "KeyConditionExpression")?.ok_or_else(|| {
        ApiError::validation("Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.")
    })?;
    let kc = parse_key_condition(text, &names, &values, &mut used)?
        .for_schema(&def.hash.name, def.range.as_ref().map(|r| r.name.as_str()))?;
    let filter = condition(req, "FilterExpression", &names, &values, &mut used)?;
    let proj = projection(req, &names, &mut used)?;
    check_unused(&names, &values, &used)?;
    let sel = select(req, proj.is_some())?;
    let (hname, hval) = &kc.hash;
    if *hname != def.hash.name {
        return Err(ApiError::validation(format!(
            "Query condition missed key schema element: {}",
            def.hash.name
        )));
    }
    if hval.value_type() != def.hash.value_type() {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: Condition parameter type does not match schema type (key {} is {}, the value is {})",
            def.hash.name,
            def.hash.ty,
            hval.value_type()
        )));
    }
    let hk =
        key_bytes(hval).ok_or_else(|| ApiError::validation("a key value must be S, N or B"))?;
    let mut range = range_bytes(&def, &kc)?;
    let forward = opt_bool(req, "ScanIndexForward")?.unwrap_or(true);
    if let Some(esk) = req.get("ExclusiveStartKey").filter(|v| !v.is_null()) {
        let esk = item_from_json(esk)?;
        let (_, kb) = def.key_of(&esk, true).map_err(|_| {
            ApiError::validation("The provided starting key is invalid: The provided key element does not match the schema")
        })?;
        if kb.hk != hk {
            return Err(ApiError::validation(
                "The provided starting key is invalid: its hash key is not the one queried",
            ));
        }
        if def.range.is_some() {
            range = range.after(kb.rk, forward);
        } else {
            // One item per hash key: nothing follows it.
            return finish_page(req, &def, Vec::new(), false, None, None, sel);
        }
    }
    let lim = limit(req)?.unwrap_or(NO_LIMIT);
    let (items, more) = store.query(name, hk, range, forward, lim).await?;
    finish_page(req, &def, items, more, filter.as_ref(), proj.as_ref(), sel)
}

async fn scan(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let name = table_name(req)?;
    no_legacy(req, &[("ScanFilter", "FilterExpression")])?;
    no_index(req)?;
    let def = store.table(name)?;
    let (names, values) = placeholders(req)?;
    let mut used = Used::default();
    let filter = condition(req, "FilterExpression", &names, &values, &mut used)?;
    let proj = projection(req, &names, &mut used)?;
    check_unused(&names, &values, &used)?;
    let sel = select(req, proj.is_some())?;
    let seg = req.get("Segment").filter(|v| !v.is_null());
    let total = req.get("TotalSegments").filter(|v| !v.is_null());
    let segs = match (seg, total) {
        (None, None) => (0u64, 1u64 << 32),
        (Some(s), Some(t)) => {
            let t = t.as_u64().filter(|t| (1..=1_000_000).contains(t)).ok_or_else(|| {
                ApiError::validation(format!(
                    "1 validation error detected: Value '{t}' at 'totalSegments' failed to satisfy constraint: Member must have value between 1 and 1000000"
                ))
            })?;
            let s = s.as_u64().filter(|s| *s < t).ok_or_else(|| {
                ApiError::validation(format!(
                    "The Segment parameter is zero-based and must be less than parameter TotalSegments: Segment: {s} is not less than TotalSegments: {t}"
                ))
            })?;
            let span = 1u64 << 32;
            (s * span / t, (s + 1) * span / t)
        }
        _ => {
            return Err(ApiError::validation(
                "The TotalSegments parameter is required but was not present in the request when Segment parameter is present (both or neither)",
            ));
        }
    };
    let after = match req.get("ExclusiveStartKey").filter(|v| !v.is_null()) {
        None => None,
        Some(esk) => {
            let esk = item_from_json(esk)?;
            let (_, kb) = def.key_of(&esk, true).map_err(|_| {
                ApiError::validation("The provided starting key is invalid: The provided key element does not match the schema")
            })?;
            Some((segment_hash(&kb.hk), kb))
        }
    };
    let lim = limit(req)?.unwrap_or(NO_LIMIT);
    let (items, more) = store.scan(name, segs, after, lim).await?;
    finish_page(req, &def, items, more, filter.as_ref(), proj.as_ref(), sel)
}

async fn batch_write(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let ri = req
        .get("RequestItems")
        .and_then(Value::as_object)
        .ok_or_else(|| validation_null("RequestItems"))?;
    let mut writes = Vec::new();
    for (table, reqs) in ri {
        check_table_name(table)?;
        let def = store.table(table)?;
        let reqs = reqs.as_array().ok_or_else(|| {
            ApiError::serialization(format!("RequestItems.{table} must be a list"))
        })?;
        let mut seen = BTreeSet::new();
        for r in reqs {
            let (key, action) = match (r.get("PutRequest"), r.get("DeleteRequest")) {
                (Some(p), None) => {
                    let item = item_field(p, "Item")?;
                    let (key, _) = def.key_of(&item, false)?;
                    (key, Action::Put(item))
                }
                (None, Some(d)) => {
                    let key = item_field(d, "Key")?;
                    def.key_of(&key, true)?;
                    (key, Action::Delete)
                }
                _ => {
                    return Err(ApiError::validation(
                        "Supplied AttributeValue has more than one datatypes set: each request of BatchWriteItem is one PutRequest or one DeleteRequest",
                    ));
                }
            };
            if !seen.insert(item_to_json(&key).to_string()) {
                return Err(ApiError::validation(
                    "Provided list of item keys contains duplicates",
                ));
            }
            writes.push(ItemWrite {
                table: table.clone(),
                key,
                action,
                condition: None,
                old_on_failure: false,
            });
        }
    }
    if writes.is_empty() || writes.len() > BATCH_WRITE_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to {BATCH_WRITE_MAX}, Member must have length greater than or equal to 1] ({} requests)",
            writes.len()
        )));
    }
    store.write(writes).await?;
    Ok(json!({"UnprocessedItems": {}}))
}

async fn batch_get(store: &Arc<Store>, req: &Value) -> Result<Value, ApiError> {
    let ri = req
        .get("RequestItems")
        .and_then(Value::as_object)
        .ok_or_else(|| validation_null("RequestItems"))?;
    let mut total = 0;
    let mut responses = Map::new();
    let mut plan = Vec::new();
    for (table, spec) in ri {
        check_table_name(table)?;
        let def = store.table(table)?;
        let keys = spec
            .get("Keys")
            .and_then(Value::as_array)
            .ok_or_else(|| validation_null("Keys"))?;
        let (names, values) = placeholders(spec)?;
        let mut used = Used::default();
        let proj = projection(spec, &names, &mut used)?;
        check_unused(&names, &values, &used)?;
        let mut seen = BTreeSet::new();
        let mut kbs = Vec::new();
        for k in keys {
            let key = item_from_json(k)?;
            let (_, kb) = def.key_of(&key, true)?;
            if !seen.insert(item_to_json(&key).to_string()) {
                return Err(ApiError::validation(
                    "Provided list of item keys contains duplicates",
                ));
            }
            kbs.push(kb);
        }
        total += kbs.len();
        plan.push((table.clone(), kbs, proj));
    }
    if total == 0 || total > BATCH_GET_MAX {
        return Err(ApiError::validation(format!(
            "Too many items requested for the BatchGetItem call ({total}; 1 to {BATCH_GET_MAX})"
        )));
    }
    for (table, kbs, proj) in plan {
        let mut items = Vec::new();
        for kb in kbs {
            if let Some(item) = store.get(&table, kb).await? {
                items.push(item_to_json(&match &proj {
                    Some(p) => project(&item, p),
                    None => item,
                }));
            }
        }
        responses.insert(table, Value::Array(items));
    }
    Ok(json!({"Responses": responses, "UnprocessedKeys": {}}))
}
