//! CardKit over HTTP (§8): create a card entity, stream element content, settings, full update and element
//! delete. Every mutation passes, after the bot-call gate: the card exists (200740), its 10 ops/s quota
//! (429 / 99991400), the uuid replay rule (200770) and the strictly increasing `sequence` (300317), then its
//! own checks. The card logic itself is in `card.rs`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use super::card::{parse_card_json, Begin, Card, CardError, Mutation};
use super::openapi::{ok, parse, refused, ApiError, SCOPE_CARDKIT};
use super::wire::{ContentRequest, CreateCardRequest, DeleteElementRequest, SettingsRequest, UpdateCardRequest};
use super::world::{Shared, World};
use super::EmulatorConfig;
use crate::ids::digits;

/// Bad-parameter code of the CardKit APIs.
const BAD: i64 = 10_002;

impl From<CardError> for ApiError {
    fn from(err: CardError) -> Self {
        ApiError::bad(err.code, err.msg)
    }
}

/// `POST /open-apis/cardkit/v1/cards`: create a card entity from card JSON 2.0.
pub async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    shared.gate(&headers, "cardkit.card.create", SCOPE_CARDKIT).await?;
    let request: CreateCardRequest = parse(&body, BAD)?;
    let card_id = shared.with(|world, config| {
        match request.kind.as_deref() {
            Some("card_json") => {}
            Some("template") => {
                return Err(refused(
                    world,
                    ApiError::bad(
                        BAD,
                        "type \"template\" needs a template designer the emulator does not have; send card_json",
                    ),
                ))
            }
            _ => return Err(refused(world, ApiError::bad(BAD, "type must be card_json or template"))),
        }
        let data = request.data.as_deref().unwrap_or_default();
        let (card, elements) = parse_card_json(data, config).map_err(|err| refused(world, err.into()))?;
        let card_id = digits(19);
        world.cards.insert(
            card_id.clone(),
            Card::new(card_id.clone(), card, elements, Instant::now()),
        );
        world.card_order.push(card_id.clone());
        world.stats.cards_created += 1;
        Ok(card_id)
    })?;
    shared.wake.notify_one();
    Ok(ok(json!({"card_id": card_id})))
}

/// Run the checks every mutation passes on `card_id`, then `apply` unless the request is a replay.
fn mutate(
    world: &mut World,
    config: &EmulatorConfig,
    card_id: &str,
    mutation: &Mutation<'_>,
    apply: impl FnOnce(&mut Card, &EmulatorConfig) -> Result<(), CardError>,
) -> Result<(), ApiError> {
    let now = Instant::now();
    let Some(card) = world.cards.get_mut(card_id) else {
        return Err(refused(
            world,
            ApiError::bad(200_740, format!("card {card_id} does not exist")),
        ));
    };
    if let Some(reset) = World::window_full(&mut card.ops, config.card_ops_per_window, config.quota_window, now) {
        card.rejected_calls += 1;
        return Err(refused(
            world,
            ApiError::rate_limited(config.card_ops_per_window, reset),
        ));
    }
    card.ops.push_back(now);
    let outcome = match card.begin(config, mutation) {
        Ok(Begin::Replayed) => {
            tracing::debug!(card_id, uuid = ?mutation.uuid, "uuid replay: answered, not applied again");
            Ok(())
        }
        Ok(Begin::Apply) => apply(card, config).map(|()| card.commit(mutation)),
        Err(err) => Err(err),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(err) => {
            card.rejected_calls += 1;
            tracing::info!(card_id, code = err.code, msg = %err.msg, api = mutation.api, "card operation refused");
            Err(refused(world, err.into()))
        }
    }
}

fn fingerprint(parts: &impl Serialize) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

/// `PUT /open-apis/cardkit/v1/cards/:card_id/elements/:element_id/content`: the full text so far (§8.3).
pub async fn content(
    State(shared): State<Arc<Shared>>,
    Path((card_id, element_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared
        .gate(&headers, "cardkit.card_element.content", SCOPE_CARDKIT)
        .await?;
    let request: ContentRequest = parse(&body, BAD)?;
    let mutation = Mutation {
        api: "content",
        uuid: request.uuid.as_deref(),
        sequence: request.sequence,
        fingerprint: fingerprint(&(&element_id, &request)),
    };
    let text = request.content.clone().unwrap_or_default();
    shared.with(|world, config| {
        mutate(world, config, &card_id, &mutation, |card, config| {
            card.check_content(config, &element_id, &text)?;
            let appended = card.apply_content(&element_id, &text);
            card.record(
                "content",
                Some(&mutation),
                Some(&element_id),
                Some(text.clone()),
                Some(appended),
            );
            Ok(())
        })
    })?;
    Ok(ok(json!({})))
}

/// `PATCH /open-apis/cardkit/v1/cards/:card_id/settings`: `config` (streaming mode, summary) and
/// `card_link` (§8.5).
pub async fn settings(
    State(shared): State<Arc<Shared>>,
    Path(card_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.gate(&headers, "cardkit.card.settings", SCOPE_CARDKIT).await?;
    let request: SettingsRequest = parse(&body, BAD)?;
    let mutation = Mutation {
        api: "settings",
        uuid: request.uuid.as_deref(),
        sequence: request.sequence,
        fingerprint: fingerprint(&request),
    };
    let settings: Option<Value> = request
        .settings
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .filter(Value::is_object);
    shared.with(|world, config| {
        mutate(world, config, &card_id, &mutation, |card, _| {
            let settings = settings
                .as_ref()
                .ok_or_else(|| CardError::new(BAD, "settings must be a JSON object serialized into a string"))?;
            if settings.get("config").is_none() && settings.get("card_link").is_none() {
                return Err(CardError::new(300_122, "settings need config or card_link"));
            }
            card.apply_settings(settings, Instant::now());
            card.record("settings", Some(&mutation), None, request.settings.clone(), None);
            Ok(())
        })
    })?;
    shared.wake.notify_one();
    Ok(ok(json!({})))
}

/// `PUT /open-apis/cardkit/v1/cards/:card_id`: replace the whole card (§8.6).
pub async fn update(
    State(shared): State<Arc<Shared>>,
    Path(card_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared.gate(&headers, "cardkit.card.update", SCOPE_CARDKIT).await?;
    let request: UpdateCardRequest = parse(&body, BAD)?;
    let mutation = Mutation {
        api: "update",
        uuid: request.uuid.as_deref(),
        sequence: request.sequence,
        fingerprint: fingerprint(&request),
    };
    shared.with(|world, config| {
        mutate(world, config, &card_id, &mutation, |card, config| {
            let body = request
                .card
                .as_ref()
                .filter(|c| c.kind.as_deref() == Some("card_json"))
                .ok_or_else(|| CardError::new(BAD, "card.type must be card_json"))?;
            let (json, elements) = parse_card_json(body.data.as_deref().unwrap_or_default(), config)?;
            card.replace(json, elements, Instant::now());
            card.record("update", Some(&mutation), None, body.data.clone(), None);
            Ok(())
        })
    })?;
    shared.wake.notify_one();
    Ok(ok(json!({})))
}

/// `DELETE /open-apis/cardkit/v1/cards/:card_id/elements/:element_id` (§8.6).
pub async fn delete_element(
    State(shared): State<Arc<Shared>>,
    Path((card_id, element_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    shared
        .gate(&headers, "cardkit.card_element.delete", SCOPE_CARDKIT)
        .await?;
    let request: DeleteElementRequest = parse(&body, BAD)?;
    let mutation = Mutation {
        api: "delete_element",
        uuid: request.uuid.as_deref(),
        sequence: request.sequence,
        fingerprint: fingerprint(&(&element_id, &request)),
    };
    shared.with(|world, config| {
        mutate(world, config, &card_id, &mutation, |card, _| {
            if card.element(&element_id).is_none() {
                return Err(CardError::new(
                    BAD,
                    format!("element {element_id} does not exist in the card"),
                ));
            }
            card.remove_element(&element_id);
            card.record("delete_element", Some(&mutation), Some(&element_id), None, None);
            Ok(())
        })
    })?;
    Ok(ok(json!({})))
}
