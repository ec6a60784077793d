//! boto3 (from PyPI; ./scripts/test installs it) against a real table server on
//! loopback: tables, CRUD over every type, conditions, update expressions, Query and
//! Scan paging through 5,000 items, batches, TTL expiry, and DynamoDB's errors for
//! bad input (crates/tables/tests/boto3_api.py holds the checks).
#![allow(clippy::unwrap_used)]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_uses_the_table_server_as_it_uses_dynamodb() {
    common::boto3_checks("boto3_api.py").await;
}
