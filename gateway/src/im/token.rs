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

/// A platform's OpenAPI client over its configuration section `C`. The platform writes its calls in an
/// `impl ApiClient<ItsConfig>` block of its own (`dingtalk::OpenApi`, `feishu::OpenApi`).
pub struct ApiClient<C> {
    pub(crate) http: reqwest::Client,
    /// The app's access token.
    pub(crate) token: TokenCache,
    /// What the status page shows: connection state, refused permissions.
    pub(crate) health: Arc<PlatformHealth>,
    pub(crate) config: C,
}

impl<C> ApiClient<C> {
    /// A client for `platform`'s API at `base` with the settings `config`, whose calls time out after
    /// `timeout_secs`, renewing its token `token_margin_secs` before it expires.
    pub fn with(
        platform: &'static str,
        base: &str,
        (timeout_secs, token_margin_secs): (u64, u64),
        config: C,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            http: http_client(timeout_secs)?,
            token: TokenCache::new(token_margin_secs),
            health: Arc::new(PlatformHealth::new(platform, base.to_owned())),
            config,
        })
    }

    /// The connector's health, which the client keeps up to date with refused and granted permissions.
    pub fn health(&self) -> &Arc<PlatformHealth> {
        &self.health
    }

    /// The settings this client uses.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Run `call` (the platform call `api`) with the app's token, from the cache or else from `fetch`; when
    /// the platform rejects the token (`rejected`), drop it and run `call` once more with a fresh one.
    pub async fn authorized<T, E, Fetch, FetchFut, Call, CallFut>(
        &self,
        api: &'static str,
        fetch: Fetch,
        rejected: impl Fn(&E) -> bool,
        call: Call,
    ) -> Result<T, E>
    where
        Fetch: Fn() -> FetchFut,
        FetchFut: Future<Output = Result<(String, u64), E>>,
        Call: Fn(String) -> CallFut,
        CallFut: Future<Output = Result<T, E>>,
    {
        match call(self.token.get(&fetch).await?).await {
            Err(err) if rejected(&err) => {
                tracing::info!(api, "the platform rejected the access token; fetching a new one");
                self.token.forget().await;
                call(self.token.get(&fetch).await?).await
            }
            other => other,
        }
    }
}

/// Send `request` and read the answer: its status and body (platforms put their own error codes in the body,
/// under any status).
pub async fn exchange(request: reqwest::RequestBuilder) -> reqwest::Result<(reqwest::StatusCode, String)> {
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.text().await?))
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
