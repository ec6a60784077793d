//! Copying one object between stores, streamed, with lifeboat's own checksum.
//!
//! Guarantees: an object is never held whole in memory — small objects (up to one
//! part) go in one PUT, larger ones as a multipart upload with at most
//! [`MAX_PARTS_IN_FLIGHT`] parts buffered; the SHA-256 of the bytes read from the
//! source is computed on the way and, when `verify` is on, compared with the SHA-256
//! of the copy read back from the destination (object_store's local e_tag is
//! inode-mtime-size, not content, so it proves nothing). Content type, user metadata
//! and the other attributes travel when the destination keeps them, tags when both
//! stores keep tags (S3-API stores).

use crate::store::{Attrs, Backend, Store, StoreError, os_path};
use bytes::Bytes;
use futures::StreamExt as _;
use md5::Digest as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

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
    /// A store cannot hold the key byte-exact: retrying will not help.
    #[error("{store} cannot hold the key {key:?}: {reason}")]
    KeyUnsupported {
        store: String,
        key: String,
        reason: String,
    },
    /// The copy read back does not match what was sent.
    #[error("checksum mismatch at destination: sent sha256 {sent}, destination holds {found}")]
    ChecksumMismatch { sent: String, found: String },
    /// Anything else (unreachable, timeouts, server errors): retried with backoff.
    /// The message carries the whole chain of causes: a client's own says where
    /// ("error sending request"), the causes below it say why ("Connection refused").
    #[error("{context}: {message}")]
    Store { context: String, message: String },
}

/// `e` and every cause below it, each once: "a: b: c".
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

impl TransferError {
    /// An object_store error of the local fast paths.
    fn store(context: impl Into<String>, store: &str, source: object_store::Error) -> Self {
        Self::from_store(context, StoreError::from_os_error(store, source))
    }

    /// A store's error, in the context of what was being done.
    pub fn from_store(context: impl Into<String>, e: StoreError) -> Self {
        match e {
            StoreError::NotFound => TransferError::SourceGone(context.into()),
            StoreError::Denied { store, message } => TransferError::AccessDenied { store, message },
            StoreError::KeyUnsupported { store, key, reason } => {
                TransferError::KeyUnsupported { store, key, reason }
            }
            StoreError::Other(message) if is_auth_failure(&message) => {
                TransferError::AccessDenied {
                    store: String::new(),
                    message,
                }
            }
            StoreError::Other(message) => TransferError::Store {
                context: context.into(),
                message,
            },
            e @ StoreError::Unlistable { .. } => TransferError::Store {
                context: context.into(),
                message: e.to_string(),
            },
        }
    }

    /// Retrying without an operator's help cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TransferError::AccessDenied { .. } | TransferError::KeyUnsupported { .. }
        )
    }
}

/// S3 servers answer a bad signature or an unknown key with 403 bodies that some
/// clients surface as generic errors; recognise them by their S3 error codes.
fn is_auth_failure(text: &str) -> bool {
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
pub async fn copy_object(
    src: &Store,
    dst: &Store,
    key: &str,
    part_size: usize,
    verify: bool,
) -> Result<Copied, TransferError> {
    let (src_name, dst_name) = (src.describe.as_str(), dst.describe.as_str());
    let read_err = |e| TransferError::from_store(format!("reading {key} from {src_name}"), e);
    let write_err = |e| TransferError::from_store(format!("writing {key} to {dst_name}"), e);

    // Local directory to local directory, small object: the whole copy in one
    // blocking call (thread hand-offs, not I/O, dominate small-object copies).
    src.check_key(key).map_err(read_err)?;
    dst.check_key(key).map_err(write_err)?;
    if let (Some(from), Some(to)) = (&src.local, &dst.local) {
        let path = os_path(src_name, key).map_err(read_err)?;
        if let Some(copied) =
            copy_local_small(from.clone(), to.clone(), &path, part_size, verify).await?
        {
            return Ok(copied);
        }
    }

    // A small object in a local directory: one blocking read, no stream.
    if let Some(fs) = &src.local {
        let path = os_path(src_name, key).map_err(read_err)?;
        if let Some((data, checksum)) = read_local(fs.clone(), &path, Some(part_size)).await? {
            let size = data.len() as u64;
            let md5 = dst
                .local
                .is_none()
                .then(|| hex::encode(md5::Md5::digest(&data)));
            let put = dst
                .put(key, vec![data], &Attrs::default())
                .await
                .map_err(write_err)?;
            return finish_copy(dst, key, size, checksum, md5, put, verify).await;
        }
    }

    let chunk = part_size.min(crate::store::READ_CHUNK);
    let got = match src.get(key, chunk, dst.keeps_tags()).await {
        Ok(Some(g)) => g,
        Ok(None) | Err(StoreError::NotFound) => {
            return Err(TransferError::SourceGone(key.to_owned()));
        }
        Err(e) => return Err(read_err(e)),
    };
    let size = got.size;
    let mut attrs = if dst.keeps_attributes() {
        got.attrs
    } else {
        Attrs::default()
    };
    if !dst.keeps_tags() {
        attrs.tags.clear();
    }
    // A multipart source between S3-API stores is copied with its own part layout, so
    // the copy's ETag (the MD5 of the parts' MD5s, "-N") is the source's.
    let layout = match (&src.backend, &dst.backend) {
        (Backend::S3(client), Backend::S3(_)) => {
            source_part_size(client, key, got.etag.as_deref(), size).await
        }
        _ => None,
    };
    let part_size = layout.unwrap_or(part_size);
    let mut stream = got.stream;
    let mut hasher = Sha256::new();
    let md5;

    let put_etag = if layout.is_none() && usize::try_from(size).is_ok_and(|s| s <= part_size) {
        // One PUT: the chunks are kept as they came (no copy), at most one part.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut md5_hasher = dst.local.is_none().then(md5::Md5::new);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(read_err)?;
            hasher.update(&chunk);
            if let Some(m) = &mut md5_hasher {
                md5::Digest::update(m, &chunk);
            }
            chunks.push(chunk);
        }
        md5 = md5_hasher.map(|m| hex::encode(md5::Digest::finalize(m)));
        dst.put(key, chunks, &attrs).await.map_err(write_err)?
    } else {
        let mut upload = dst
            .upload(key, &attrs, part_size)
            .await
            .map_err(write_err)?;
        let mut parts = dst.local.is_none().then(|| MultipartMd5::new(part_size));
        let result: Result<(), TransferError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(read_err)?;
                hasher.update(&chunk);
                if let Some(p) = &mut parts {
                    p.update(&chunk);
                }
                upload
                    .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
                    .await
                    .map_err(write_err)?;
                upload.put(chunk);
            }
            Ok(())
        }
        .await;
        md5 = parts.map(MultipartMd5::finish);
        match result {
            Ok(()) => upload.finish().await.map_err(write_err)?,
            Err(e) => {
                // Do not leave a half upload behind (its parts cost storage on S3).
                upload.abort().await;
                return Err(e);
            }
        }
    };
    let checksum = hex::encode(hasher.finalize());
    finish_copy(dst, key, size, checksum, md5, put_etag, verify).await
}

/// The largest source part lifeboat copies part for part (two are buffered per copy).
const MAX_LAYOUT_PART: u64 = 64 << 20;

/// The part size of an S3 multipart object (`etag` ends in `-N`), when its layout is
/// known and uniform: part 1's size, from a HEAD with `partNumber=1` that names the
/// same number of parts, such that N parts of it hold `size`. None otherwise (a server
/// that ignores `partNumber`, parts too large to buffer): the copy is cut at the
/// configured part size and verified by its checksum instead.
async fn source_part_size(
    client: &crate::s3::S3Client,
    key: &str,
    etag: Option<&str>,
    size: u64,
) -> Option<usize> {
    let parts: u64 = etag?.trim_matches('"').rsplit_once('-')?.1.parse().ok()?;
    if parts == 0 {
        return None;
    }
    let head = client.head(key, Some(1)).await.ok()??;
    let part = head.size;
    let uniform = part > 0
        && head.parts_count.map(u64::from) == Some(parts)
        && size > part.saturating_mul(parts - 1)
        && size <= part.saturating_mul(parts);
    (uniform && part <= MAX_LAYOUT_PART)
        .then(|| usize::try_from(part).ok())
        .flatten()
}

/// S3's ETag of a multipart upload: the MD5 of the parts' MD5s, then `-` and the
/// number of parts. Uploads cut parts at exact multiples of the part size, so the
/// same cuts are made here.
struct MultipartMd5 {
    part_size: usize,
    in_part: usize,
    current: md5::Md5,
    digests: Vec<u8>,
    parts: usize,
}

impl MultipartMd5 {
    fn new(part_size: usize) -> Self {
        Self {
            part_size,
            in_part: 0,
            current: md5::Md5::new(),
            digests: Vec::new(),
            parts: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (self.part_size - self.in_part).min(data.len());
            md5::Digest::update(&mut self.current, &data[..take]);
            self.in_part += take;
            data = &data[take..];
            if self.in_part == self.part_size {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let done = std::mem::replace(&mut self.current, md5::Md5::new());
        self.digests.extend_from_slice(&md5::Digest::finalize(done));
        self.parts += 1;
        self.in_part = 0;
    }

    fn finish(mut self) -> String {
        if self.in_part > 0 {
            self.close_part();
        }
        format!(
            "{}-{}",
            hex::encode(md5::Md5::digest(&self.digests)),
            self.parts
        )
    }
}

/// After the write: read the copy back and compare (when `verify`), and learn the
/// destination's e_tag for later cheap checks.
async fn finish_copy(
    dst: &Store,
    key: &str,
    size: u64,
    checksum: String,
    md5: Option<String>,
    put_etag: Option<String>,
    verify: bool,
) -> Result<Copied, TransferError> {
    let dst_name = dst.describe.as_str();
    // A single-part PUT to S3 answers with the MD5 of the bytes the server stored
    // as its ETag (a multipart one with S3's md5-of-md5s-N): equal to what was
    // computed from the source's bytes, the copy is verified without reading it
    // back. (Servers whose ETag is not the MD5 — SSE-KMS, some gateways — fall
    // through to the read-back below.)
    if verify
        && let (Some(md5), Some(etag)) = (&md5, &put_etag)
        && etag.trim_matches('"').eq_ignore_ascii_case(md5)
    {
        return Ok(Copied {
            size,
            checksum,
            dest_etag: put_etag,
        });
    }
    let back_err = |e| TransferError::from_store(format!("reading back {key} from {dst_name}"), e);
    if !verify {
        let dest_etag = match put_etag {
            Some(e) => Some(e),
            None => dst.head(key).await.map_err(back_err)?.and_then(|m| m.etag),
        };
        return Ok(Copied {
            size,
            checksum,
            dest_etag,
        });
    }
    let (found, found_etag, dest_size) = match (&dst.local, &put_etag) {
        // A local copy whose e_tag the write returned: read it in one blocking call.
        (Some(fs), Some(etag)) => {
            let path = os_path(dst_name, key).map_err(back_err)?;
            match read_local(fs.clone(), &path, None).await {
                Ok(Some((data, sum))) => (sum, Some(etag.clone()), data.len() as u64),
                Ok(None) | Err(TransferError::SourceGone(_)) => {
                    (String::from("(missing)"), None, 0)
                }
                Err(e) => return Err(e),
            }
        }
        _ => match checksum_of(dst, key).await {
            Ok(Some(found)) => found,
            Ok(None) => (String::from("(missing)"), None, 0),
            Err(e) => return Err(e),
        },
    };
    if found != checksum || dest_size != size {
        return Err(TransferError::ChecksumMismatch {
            sent: checksum,
            found,
        });
    }
    Ok(Copied {
        size,
        checksum,
        dest_etag: put_etag.or(found_etag),
    })
}

/// Read a whole object of a local store in one blocking call, with its SHA-256.
/// `None` when it is larger than `limit` (the caller streams it instead).
async fn read_local(
    fs: Arc<LocalFileSystem>,
    key: &Path,
    limit: Option<usize>,
) -> Result<Option<(Bytes, String)>, TransferError> {
    let key = key.clone();
    let name = "LocalFileSystem";
    let joined = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let path = fs
            .path_to_filesystem(&key)
            .map_err(|e| TransferError::store(format!("mapping {key} to a file"), name, e))?;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TransferError::SourceGone(key.to_string()));
            }
            Err(e) => return Err(io_error(&key, &path, e)),
        };
        let len = file.metadata().map_err(|e| io_error(&key, &path, e))?.len();
        if limit.is_some_and(|l| len > l as u64) {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data)
            .map_err(|e| io_error(&key, &path, e))?;
        let sum = hex::encode(Sha256::digest(&data));
        Ok(Some((Bytes::from(data), sum)))
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(TransferError::store(
            "reading a local object",
            name,
            object_store::Error::JoinError { source: e },
        )),
    }
}

/// Copy a small object between two local directory stores in one blocking call:
/// read and hash the source, write a staged file next to the destination
/// (`name#N`, which listings ignore, as object_store's own uploads do), rename it
/// into place, and (with `verify`) read it back and compare. `None` when the object
/// is larger than `limit`.
async fn copy_local_small(
    from: Arc<LocalFileSystem>,
    to: Arc<LocalFileSystem>,
    key: &Path,
    limit: usize,
    verify: bool,
) -> Result<Option<Copied>, TransferError> {
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let key = key.clone();
    let joined = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let map = |fs: &LocalFileSystem| {
            fs.path_to_filesystem(&key).map_err(|e| {
                TransferError::store(format!("mapping {key} to a file"), "LocalFileSystem", e)
            })
        };
        let src_path = map(&from)?;
        let mut file = match std::fs::File::open(&src_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TransferError::SourceGone(key.to_string()));
            }
            Err(e) => return Err(io_error(&key, &src_path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| io_error(&key, &src_path, e))?
            .len();
        if len > limit as u64 {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data)
            .map_err(|e| io_error(&key, &src_path, e))?;
        let checksum = hex::encode(Sha256::digest(&data));

        let dst_path = map(&to)?;
        let write_err = |p: &std::path::Path, e: std::io::Error| TransferError::Store {
            context: format!("writing {key} ({})", p.display()),
            message: e.to_string(),
        };
        let (staged, mut out) = loop {
            let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut name = dst_path.file_name().unwrap_or_default().to_os_string();
            name.push(format!("#{n}"));
            let staged = dst_path.with_file_name(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&staged)
            {
                Ok(f) => break (staged, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let parent = dst_path.parent().unwrap_or(std::path::Path::new("/"));
                    std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
                }
                Err(e) => return Err(write_err(&staged, e)),
            }
        };
        let written = out.write_all(&data).and_then(|()| out.flush());
        drop(out);
        if let Err(e) = written.and_then(|()| std::fs::rename(&staged, &dst_path)) {
            let _ = std::fs::remove_file(&staged);
            return Err(write_err(&dst_path, e));
        }
        let meta = std::fs::metadata(&dst_path).map_err(|e| write_err(&dst_path, e))?;
        if verify {
            let back = std::fs::read(&dst_path).map_err(|e| write_err(&dst_path, e))?;
            let found = hex::encode(Sha256::digest(&back));
            if found != checksum {
                return Err(TransferError::ChecksumMismatch {
                    sent: checksum,
                    found,
                });
            }
        }
        Ok(Some(Copied {
            size: len,
            checksum,
            dest_etag: Some(local_etag(&meta)),
        }))
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(TransferError::store(
            "copying a local object",
            "LocalFileSystem",
            object_store::Error::JoinError { source: e },
        )),
    }
}

/// The e_tag object_store's LocalFileSystem reports for a file (inode, mtime in
/// microseconds and size, hex). A test holds it to object_store's own value.
pub fn local_etag(meta: &std::fs::Metadata) -> String {
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{inode:x}-{mtime:x}-{:x}\"", meta.len())
}

fn io_error(key: &Path, path: &std::path::Path, e: std::io::Error) -> TransferError {
    TransferError::Store {
        context: format!("reading {key} ({})", path.display()),
        message: e.to_string(),
    }
}

/// SHA-256 (hex), e_tag and size of an object, read as a stream; `None` when there
/// is no such object.
pub async fn checksum_of(
    store: &Store,
    key: &str,
) -> Result<Option<(String, Option<String>, u64)>, TransferError> {
    let name = store.describe.as_str();
    let err = |e| TransferError::from_store(format!("reading back {key} from {name}"), e);
    let Some(got) = store
        .get(key, crate::store::READ_CHUNK, false)
        .await
        .map_err(err)?
    else {
        return Ok(None);
    };
    let etag = got.etag.clone();
    let mut size = 0u64;
    let mut hasher = Sha256::new();
    let mut stream = got.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(err)?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Some((hex::encode(hasher.finalize()), etag, size)))
}

/// Delete `key` at `dst`; an object already gone counts as deleted.
pub async fn delete_object(dst: &Store, key: &str) -> Result<(), TransferError> {
    dst.delete(key)
        .await
        .map_err(|e| TransferError::from_store(format!("deleting {key} at {}", dst.describe), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;

    #[tokio::test]
    async fn local_etag_matches_object_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("x"), b"hello").expect("write");
        let fs = LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let meta = fs.head(&Path::from("x")).await.expect("head");
        let ours = local_etag(&std::fs::metadata(dir.path().join("x")).expect("metadata"));
        assert_eq!(meta.e_tag.as_deref(), Some(ours.as_str()));
    }
}
