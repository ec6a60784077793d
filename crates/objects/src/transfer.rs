//! Copying one object between stores, streamed, with lifeboat's own checksum.
//!
//! Guarantees: an object is never held whole in memory — small objects (up to one
//! part) go in one PUT, larger ones as a multipart upload with at most
//! [`MAX_PARTS_IN_FLIGHT`] parts buffered; the SHA-256 of the bytes read from the
//! source is computed on the way and, when `verify` is on, compared with the SHA-256
//! of the copy read back from the destination (object_store's local e_tag is
//! inode-mtime-size, not content, so it proves nothing). Content type and the other
//! attributes travel when the destination keeps them.

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{
    Attributes, ObjectStore, ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};
use sha2::{Digest as _, Sha256};

/// Parts of one multipart upload buffered or in flight at once.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Why a transfer failed; the replicator decides from the kind whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source object is gone (deleted since it was seen).
    #[error("source object is gone: {0}")]
    SourceGone(String),
    /// The destination refused our credentials: retrying will not help until an
    /// operator fixes them.
    #[error("access denied by {store}: {message} (check the store's credentials)")]
    AccessDenied { store: String, message: String },
    /// The copy read back does not match what was sent.
    #[error("checksum mismatch at destination: sent sha256 {sent}, destination holds {found}")]
    ChecksumMismatch { sent: String, found: String },
    /// Anything else (unreachable, timeouts, server errors): retried with backoff.
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: object_store::Error,
    },
}

impl TransferError {
    fn store(context: impl Into<String>, store: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => TransferError::AccessDenied {
                store: store.to_owned(),
                message: source.to_string(),
            },
            source if is_auth_failure(&source) => TransferError::AccessDenied {
                store: store.to_owned(),
                message: source.to_string(),
            },
            source => TransferError::Store {
                context: context.into(),
                source,
            },
        }
    }

    /// Retrying without an operator's help cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, TransferError::AccessDenied { .. })
    }
}

/// S3 servers answer a bad signature or an unknown key with 403 bodies that some
/// clients surface as generic errors; recognise them by their S3 error codes.
fn is_auth_failure(e: &object_store::Error) -> bool {
    let text = format!("{e:?}");
    [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403 Forbidden",
        "401 Unauthorized",
    ]
    .iter()
    .any(|code| text.contains(code))
}

/// A finished, verified copy.
#[derive(Debug, Clone)]
pub struct Copied {
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub checksum: String,
    /// The destination's e_tag for the copy (to notice later changes cheaply).
    pub dest_etag: Option<String>,
}

/// Copy `key` from `src` to `dst`, streaming.
#[allow(clippy::too_many_arguments)]
pub async fn copy_object(
    src: &dyn ObjectStore,
    src_name: &str,
    dst: &dyn ObjectStore,
    dst_name: &str,
    dst_keeps_attributes: bool,
    key: &Path,
    part_size: usize,
    verify: bool,
) -> Result<Copied, TransferError> {
    let got = match src.get(key).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(TransferError::SourceGone(key.to_string()));
        }
        Err(e) => {
            return Err(TransferError::store(
                format!("reading {key} from {src_name}"),
                src_name,
                e,
            ));
        }
    };
    let size = got.meta.size;
    let attributes = if dst_keeps_attributes {
        got.attributes.clone()
    } else {
        Attributes::new()
    };
    let mut stream = got.into_stream();
    let mut hasher = Sha256::new();
    let read_err = |e| TransferError::store(format!("reading {key} from {src_name}"), src_name, e);
    let write_err = |e| TransferError::store(format!("writing {key} to {dst_name}"), dst_name, e);

    let put_etag = if usize::try_from(size).is_ok_and(|s| s <= part_size) {
        // One PUT: the chunks are kept as they came (no copy), at most one part.
        let mut chunks: Vec<Bytes> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(read_err)?;
            hasher.update(&chunk);
            chunks.push(chunk);
        }
        let payload: PutPayload = chunks.into_iter().collect();
        let opts = PutOptions {
            attributes,
            ..Default::default()
        };
        dst.put_opts(key, payload, opts)
            .await
            .map_err(write_err)?
            .e_tag
    } else {
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = dst.put_multipart_opts(key, opts).await.map_err(write_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
        let result: Result<(), TransferError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(read_err)?;
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
                    .await
                    .map_err(write_err)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => writer.finish().await.map_err(write_err)?.e_tag,
            Err(e) => {
                // Do not leave a half upload behind (its parts cost storage on S3).
                let _ = writer.abort().await;
                return Err(e);
            }
        }
    };
    let checksum = hex::encode(hasher.finalize());

    if !verify {
        let dest_etag = match put_etag {
            Some(e) => Some(e),
            None => dst.head(key).await.map_err(write_err)?.e_tag,
        };
        return Ok(Copied {
            size,
            checksum,
            dest_etag,
        });
    }
    let (found, dest_etag, dest_size) = checksum_of(dst, dst_name, key).await?;
    if found != checksum || dest_size != size {
        return Err(TransferError::ChecksumMismatch {
            sent: checksum,
            found,
        });
    }
    Ok(Copied {
        size,
        checksum,
        dest_etag,
    })
}

/// SHA-256 (hex), e_tag and size of an object, read as a stream.
pub async fn checksum_of(
    store: &dyn ObjectStore,
    name: &str,
    key: &Path,
) -> Result<(String, Option<String>, u64), TransferError> {
    let err = |e| TransferError::store(format!("reading back {key} from {name}"), name, e);
    let got = store.get(key).await.map_err(err)?;
    let etag = got.meta.e_tag.clone();
    let mut size = 0u64;
    let mut hasher = Sha256::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(err)?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hex::encode(hasher.finalize()), etag, size))
}

/// Delete `key` at `dst`; an object already gone counts as deleted.
pub async fn delete_object(
    dst: &dyn ObjectStore,
    dst_name: &str,
    key: &Path,
) -> Result<(), TransferError> {
    match dst.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(TransferError::store(
            format!("deleting {key} at {dst_name}"),
            dst_name,
            e,
        )),
    }
}
