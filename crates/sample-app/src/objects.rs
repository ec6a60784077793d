//! The message the front page shows: one object in the region's object store (a local
//! directory, read through `object_store`'s `LocalFileSystem`, the same crate lifeboat
//! replicates objects with).
//!
//! Guarantees: a missing directory or object is "no message yet", never an error; other
//! failures are shown as such; at most [`MAX_MESSAGE_BYTES`] are shown.

use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use std::path::PathBuf;

/// Longest message shown (the rest is cut).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What the page shows for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    NotYet,
    NoStore,
    Unavailable(String),
}

impl Message {
    pub fn display(&self) -> String {
        match self {
            Message::Text(t) => t.clone(),
            Message::NotYet => "(no message yet)".into(),
            Message::NoStore => "(no object store configured)".into(),
            Message::Unavailable(why) => format!("(message unavailable: {why})"),
        }
    }
}

/// One object in one local object store.
#[derive(Debug, Clone)]
pub struct MessageSource {
    pub dir: Option<PathBuf>,
    pub key: String,
}

impl MessageSource {
    pub async fn read(&self) -> Message {
        let Some(dir) = &self.dir else {
            return Message::NoStore;
        };
        if !dir.is_dir() {
            // Replication may not have created it yet.
            return Message::NotYet;
        }
        let store = match LocalFileSystem::new_with_prefix(dir) {
            Ok(s) => s,
            Err(e) => return Message::Unavailable(e.to_string()),
        };
        let key = match ObjectPath::parse(&self.key) {
            Ok(k) => k,
            Err(e) => return Message::Unavailable(format!("bad key {:?}: {e}", self.key)),
        };
        let got = match store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Message::NotYet,
            Err(e) => return Message::Unavailable(e.to_string()),
        };
        match got.bytes().await {
            Ok(b) => {
                let shown = &b[..b.len().min(MAX_MESSAGE_BYTES)];
                Message::Text(String::from_utf8_lossy(shown).into_owned())
            }
            Err(object_store::Error::NotFound { .. }) => Message::NotYet,
            Err(e) => Message::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_store_object_and_present_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = MessageSource {
            dir: Some(dir.path().join("absent")),
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(src.read().await, Message::NotYet);
        let src = MessageSource {
            dir: Some(dir.path().to_path_buf()),
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(src.read().await, Message::NotYet);
        std::fs::write(dir.path().join("msgdrdct.txt"), "hello <b>").expect("write");
        assert_eq!(src.read().await, Message::Text("hello <b>".into()));
        let none = MessageSource {
            dir: None,
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(none.read().await.display(), "(no object store configured)");
    }
}
