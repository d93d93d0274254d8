//! What every platform's OpenAPI client holds: [`ApiClient`], the HTTP client, the app's access token
//! ([`TokenCache`]: kept until a margin before it expires, fetched by one caller at a time, dropped when
//! the platform rejects it) and the health the calls report.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::platform::PlatformHealth;

/// An HTTP client whose calls time out after `timeout_secs`.
pub fn http_client(timeout_secs: u64) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs.max(1)))
        .build()
}

/// The parts of a platform's OpenAPI client that are not the platform's.
pub struct ApiClient {
    pub http: reqwest::Client,
    /// The app's access token.
    pub token: TokenCache,
    /// What the status page shows: connection state, refused permissions.
    pub health: Arc<PlatformHealth>,
}

impl ApiClient {
    /// A client for `platform`'s API at `base`, whose calls time out after `timeout_secs`, renewing its
    /// token `token_margin_secs` before it expires.
    pub fn new(platform: &'static str, base: &str, timeout_secs: u64, token_margin_secs: u64) -> reqwest::Result<Self> {
        Ok(Self {
            http: http_client(timeout_secs)?,
            token: TokenCache::new(token_margin_secs),
            health: Arc::new(PlatformHealth::new(platform, base.to_owned())),
        })
    }

    /// Send `request` and read the answer: its status and body (platforms put their own error codes in
    /// the body, under any status).
    pub async fn exchange(request: reqwest::RequestBuilder) -> reqwest::Result<(reqwest::StatusCode, String)> {
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.text().await?))
    }
}

/// One app's access token and when to stop using it.
pub struct TokenCache {
    /// Fetch a new token this long before the old one expires.
    margin: Duration,
    /// A tokio mutex, held across the fetch on purpose: one fetch at a time, and callers behind it take
    /// its token.
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenCache {
    /// An empty cache that renews tokens `margin_secs` before they expire.
    pub fn new(margin_secs: u64) -> Self {
        Self {
            margin: Duration::from_secs(margin_secs),
            cached: Mutex::new(None),
        }
    }

    /// The cached token, or a new one from `fetch`, which answers the token and its lifetime in seconds. A
    /// token whose lifetime is shorter than the margin is used for half of it.
    pub async fn get<E, Fut>(&self, fetch: impl FnOnce() -> Fut) -> Result<String, E>
    where
        Fut: Future<Output = Result<(String, u64), E>>,
    {
        let mut cached = self.cached.lock().await;
        if let Some((token, use_until)) = cached.as_ref() {
            if Instant::now() < *use_until {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = fetch().await?;
        let lifetime = Duration::from_secs(lifetime);
        let usable = if lifetime > self.margin {
            lifetime - self.margin
        } else {
            lifetime / 2
        };
        tracing::debug!(lifetime_secs = lifetime.as_secs(), "access token fetched");
        *cached = Some((token.clone(), Instant::now() + usable.max(Duration::from_secs(1))));
        Ok(token)
    }

    /// Drop the cached token (the platform rejected it): the next [`get`](Self::get) fetches a new one.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokens_are_kept_until_the_margin_and_refetched_after_it() {
        let cache = TokenCache::new(300);
        let fetches = std::sync::atomic::AtomicU32::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok::<_, ()>((format!("t{n}"), 7200))
        };
        assert_eq!(cache.get(fetch).await.unwrap(), "t1");
        tokio::time::advance(Duration::from_secs(7200 - 301)).await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t2");
        cache.forget().await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t3");
        // A lifetime under the margin is used for half of it.
        let short = TokenCache::new(300);
        short
            .get(|| async { Ok::<_, ()>(("s1".to_owned(), 100)) })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(49)).await;
        assert_eq!(
            short
                .get(|| async { Ok::<_, ()>(("s2".to_owned(), 100)) })
                .await
                .unwrap(),
            "s1"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            short
                .get(|| async { Ok::<_, ()>(("s3".to_owned(), 100)) })
                .await
                .unwrap(),
            "s3"
        );
        assert_eq!(
            cache.get(|| async { Err::<(String, u64), _>("no") }).await.unwrap(),
            "t3"
        );
    }
}
