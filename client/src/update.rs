//! Application reconciliation (Dynamo §4.4 and §6, "business logic specific
//! reconciliation"): a read-modify-write that hands every concurrent version of a key to
//! the application's merge, writes the result with the read's context, and merges again
//! when a concurrent write slipped in.

use bytes::Bytes;

use super::{Client, ClientError, Context};

impl Client {
    /// Reads `key`, writes `merge(versions)` with the read's context (so the write
    /// supersedes every version the read saw: none for a new key, one, or concurrent
    /// siblings), and reads again: when a write the first read did not see made
    /// siblings meanwhile, merges those and writes again, at most `attempts` rounds
    /// (at least one). Returns the context of the last write.
    ///
    /// `merge` gets every version, its own earlier output among them in later rounds,
    /// so it must tolerate that: a set union (the paper's shopping cart), a maximum. The
    /// check read sees the write when R + W > N (the default 2 + 2 > 3).
    ///
    /// ```no_run
    /// # async fn demo(client: &dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
    /// // Add an item to a cart kept as comma-separated items; concurrent carts merge.
    /// client
    ///     .update(b"cart:42", 5, |versions| {
    ///         let mut items: std::collections::BTreeSet<Vec<u8>> = versions
    ///             .iter()
    ///             .flat_map(|v| v.split(|b| *b == b',').map(<[u8]>::to_vec))
    ///             .filter(|item| !item.is_empty())
    ///             .collect();
    ///         items.insert(b"apples".to_vec());
    ///         items.into_iter().collect::<Vec<_>>().join(&b',')
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// A read's or write's error, or [`ClientError::Contended`] when siblings remained
    /// after `attempts` rounds.
    pub async fn update<F>(
        &self,
        key: &[u8],
        attempts: usize,
        mut merge: F,
    ) -> Result<Context, ClientError>
    where
        F: FnMut(&[Bytes]) -> Vec<u8>,
    {
        let attempts = attempts.max(1);
        let mut read = self.get(key).await?;
        for _ in 0..attempts {
            let value = merge(&read.values);
            let written = self.put(key, &read.context, &value).await?;
            read = self.get(key).await?;
            if !read.has_siblings() {
                return Ok(written);
            }
        }
        Err(ClientError::Contended { attempts })
    }
}
