//! `/admin/tenants`: create, list, read and change tenants; issue and revoke API keys.
//!
//! A key is shown once, in the answer that creates it; only its SHA-256 is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pulsestream_core::{
    KeyId, KeyScope, RateLimit, RateLimitError, Tenant, TenantChange, TenantChangeError, TenantId,
    TenantKey,
};
use pulsestream_store::TenantChangeFailed;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::{Admin, secret_hash};
use crate::error::{ApiError, ErrorItem};
use crate::extract::{self, Path, Query};
use crate::openapi as doc;

/// The limit given to a tenant created without one: 6,000 events a minute.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 6_000;
const MAX_NAME_CHARS: usize = 256;

/// The body of `POST /admin/tenants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"name": "acme", "rate_limit_per_minute": 6000, "burst": 6000})))]
pub struct CreateTenant {
    /// 1 to 256 characters, surrounding whitespace trimmed.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// Events per minute.
    #[schema(value_type = Option<i64>, format = Int64, minimum = 1, maximum = 4_294_967_295_i64,
             default = json!(DEFAULT_RATE_LIMIT_PER_MINUTE))]
    rate_limit_per_minute: Option<Count>,
    /// The most events admitted at once; defaults to `rate_limit_per_minute`.
    #[schema(value_type = Option<i64>, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    burst: Option<Count>,
    /// Days events are kept, by their `timestamp` (0: forever); absent: the server's
    /// `--retention-days`.
    #[schema(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 36500)]
    retention_days: Option<Count>,
}

/// A count a client may write as `6104` or `6104.0` (JSON Schema calls both integers), up to
/// `u32`'s range; anything else is refused as a wrong type (422).
#[derive(Debug, Clone, Copy)]
pub struct Count(u32);

impl Count {
    fn get(count: Option<Self>) -> Option<u32> {
        count.map(|Self(value)| value)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let number = serde_json::Number::deserialize(deserializer)?;
        number
            .as_u64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|value| {
                        value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(value)
                    })
                    .map(|value| value as u64)
            })
            .and_then(|value| u32::try_from(value).ok())
            .map(Self)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "{number} is not a whole number from 0 to 4294967295"
                ))
            })
    }
}

/// The body of `PATCH /admin/tenants/{id}`: only the fields sent change. A new
/// `rate_limit_per_minute` without `burst` keeps `burst` equal to the rate if it was.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// 1 to 256 characters, surrounding whitespace trimmed.
    #[schema(min_length = 1, max_length = 256)]
    name: Option<String>,
    /// Events per minute.
    #[schema(value_type = Option<i64>, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    rate_limit_per_minute: Option<Count>,
    /// The most events admitted at once.
    #[schema(value_type = Option<i64>, format = Int64, minimum = 1, maximum = 4_294_967_295_i64)]
    burst: Option<Count>,
    /// Days events are kept, by their `timestamp` (0: forever).
    #[schema(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 36500)]
    retention_days: Option<Count>,
}

/// The body of `POST /admin/tenants/{id}/keys` (optional).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `full` (the default): everything a tenant may do. `ingest`: send events only.
    #[serde(default)]
    #[schema(value_type = doc::KeyScopeName, inline, example = "ingest")]
    scope: KeyScope,
}

/// One API key of a tenant; the key itself is never shown again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct KeyView {
    /// The key's id, for `DELETE /admin/tenants/{id}/keys/{key_id}`.
    #[schema(value_type = String, format = "uuid")]
    id: KeyId,
    /// The key's first characters, to recognise it.
    prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    /// `full` or `ingest` (send events only).
    #[schema(value_type = doc::KeyScopeName, inline)]
    scope: KeyScope,
}

/// A tenant. `api_key` and `key_id` are present only in the answer that creates it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantView {
    #[schema(value_type = String, format = "uuid")]
    id: TenantId,
    name: String,
    /// Events per minute.
    rate_limit_per_minute: u32,
    /// The most events admitted at once.
    burst: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    /// Days events are kept (0: forever); `null`: the server's `--retention-days`.
    retention_days: Option<u32>,
    /// The tenant's keys that work (revoked ones are gone).
    keys: Vec<KeyView>,
    /// The first API key: shown once, in the answer that creates the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    api_key: Option<String>,
    /// The id of `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid", nullable = false)]
    key_id: Option<KeyId>,
}

/// The answer to `GET /admin/tenants`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantList {
    tenants: Vec<TenantView>,
    /// Present when more tenants follow: send it as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_cursor: Option<String>,
}

/// A new API key; `api_key` is shown here only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NewKeyView {
    /// The key's id, for `DELETE /admin/tenants/{id}/keys/{key_id}`.
    #[schema(value_type = String, format = "uuid")]
    id: KeyId,
    #[schema(value_type = String, format = "uuid")]
    tenant_id: TenantId,
    /// The key, for `Authorization: Bearer <api_key>`.
    api_key: String,
    /// The key's first characters, to recognise it.
    prefix: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// `full` or `ingest` (send events only).
    #[schema(value_type = doc::KeyScopeName, inline)]
    scope: KeyScope,
}

impl TenantView {
    fn of(tenant: &Tenant) -> Self {
        Self {
            id: tenant.id,
            name: tenant.name.clone(),
            rate_limit_per_minute: tenant.rate_limit.per_minute,
            burst: tenant.rate_limit.burst,
            created_at: tenant.created_at,
            retention_days: tenant.retention_days,
            keys: tenant
                .keys
                .iter()
                .map(|key| KeyView {
                    id: key.id,
                    prefix: key.prefix.clone(),
                    created_at: key.created_at,
                    scope: key.scope,
                })
                .collect(),
            api_key: None,
            key_id: None,
        }
    }
}

/// `POST /admin/tenants`.
#[utoipa::path(
    post,
    path = "/admin/tenants",
    operation_id = "create_tenant",
    tag = "tenants",
    summary = "Create a tenant and its first API key",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created; `api_key` is shown only here", body = TenantView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn create(
    _: Admin,
    State(app): State<AppState>,
    extract::Json(request): extract::Json<CreateTenant>,
) -> Result<Response, ApiError> {
    let name = check_name(request.name)?;
    let rate_limit = rate_limit(
        Count::get(request.rate_limit_per_minute).unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE),
        Count::get(request.burst),
    )?;
    let (api_key, key) = new_key(KeyScope::Full);
    let tenant = Tenant {
        id: TenantId::random(),
        name,
        rate_limit,
        keys: vec![key],
        created_at: OffsetDateTime::now_utc(),
        retention_days: check_retention(Count::get(request.retention_days))?,
    };
    app.tenants.create_tenant(&tenant).await?;
    tracing::info!(tenant_id = %tenant.id, "tenant created");
    let mut view = TenantView::of(&tenant);
    view.key_id = Some(tenant.keys[0].id);
    view.api_key = Some(api_key);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The query of `GET /admin/tenants`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TenantListQuery {
    /// Tenants per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(
        pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    cursor: Option<String>,
}

/// `GET /admin/tenants`: a page of tenants, oldest first.
#[utoipa::path(
    get,
    path = "/admin/tenants",
    operation_id = "list_tenants",
    tag = "tenants",
    summary = "List tenants, a page at a time",
    params(TenantListQuery),
    responses(
        (status = 200, description = "A page of tenants, oldest first; `next_cursor` when more follow", body = TenantList),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn list(
    _: Admin,
    State(app): State<AppState>,
    Query(query): Query<TenantListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(query_error("limit", "must be an integer from 1 to 1000"));
    }
    let after = match &query.cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .parse::<TenantId>()
                .map_err(|_| query_error("cursor", "must be a next_cursor of this list"))?,
        ),
    };
    // One more than the page tells whether another page follows.
    let mut page = app.tenants.tenants(after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = more
        .then(|| page.last().map(|tenant| tenant.id.to_string()))
        .flatten();
    let tenants = page.iter().map(TenantView::of).collect();
    Ok(Json(TenantList {
        tenants,
        next_cursor,
    })
    .into_response())
}

fn query_error(field: &str, msg: &str) -> ApiError {
    ApiError::validation(
        format!("{field} {msg}"),
        vec![ErrorItem {
            loc: vec!["query".into(), field.into()],
            kind: "value_error".into(),
            msg: msg.into(),
        }],
    )
}

/// The most days of retention (100 years): more is a typo, not a policy.
const MAX_RETENTION_DAYS: u32 = 36_500;

fn check_retention(days: Option<u32>) -> Result<Option<u32>, ApiError> {
    match days {
        Some(days) if days > MAX_RETENTION_DAYS => Err(ApiError::validation(
            "1 bad field",
            vec![ErrorItem {
                loc: vec!["body".into(), "retention_days".into()],
                kind: "less_than_equal".into(),
                msg: format!("must be at most {MAX_RETENTION_DAYS} (0 keeps events forever)"),
            }],
        )),
        days => Ok(days),
    }
}

/// `GET /admin/tenants/{id}`.
#[utoipa::path(
    get,
    path = "/admin/tenants/{id}",
    operation_id = "get_tenant",
    tag = "tenants",
    summary = "Read a tenant",
    params(("id" = String, Path, format = "uuid", description = "The tenant's id")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn get(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = find(&app, &id).await?;
    Ok(Json(TenantView::of(&tenant)).into_response())
}

/// `PATCH /admin/tenants/{id}`: new limits take effect with the next request.
#[utoipa::path(
    patch,
    path = "/admin/tenants/{id}",
    operation_id = "update_tenant",
    tag = "tenants",
    summary = "Change a tenant's name or limits",
    description = "New limits take effect with the tenant's next request.",
    params(("id" = String, Path, format = "uuid", description = "The tenant's id")),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant as changed", body = TenantView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn update(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    extract::Json(request): extract::Json<UpdateTenant>,
) -> Result<Response, ApiError> {
    let name = request.name.map(check_name).transpose()?;
    let change = TenantChange::Update {
        name,
        per_minute: Count::get(request.rate_limit_per_minute),
        burst: Count::get(request.burst),
        retention_days: check_retention(Count::get(request.retention_days))?,
    };
    let tenant = change_tenant(&app, &id, &change).await?;
    Ok(Json(TenantView::of(&tenant)).into_response())
}

/// `POST /admin/tenants/{id}/keys`: a new key; the old ones keep working.
#[utoipa::path(
    post,
    path = "/admin/tenants/{id}/keys",
    operation_id = "create_tenant_key",
    tag = "tenants",
    summary = "Issue a new API key",
    description = "The tenant's other keys keep working until they are revoked. \
        `{\"scope\": \"ingest\"}` makes a key that can only send events (for browser and \
        mobile SDKs, where anyone can read it); without a body the key can do everything.",
    params(("id" = String, Path, format = "uuid", description = "The tenant's id")),
    request_body(content = Option<CreateKey>, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `api_key` is shown only here", body = NewKeyView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::ValidationFailed),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn create_key(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    // No body, `null` and `{}` all mean a full key.
    request: Option<extract::Json<Option<CreateKey>>>,
) -> Result<Response, ApiError> {
    let scope = request
        .and_then(|extract::Json(request)| request)
        .map_or(KeyScope::Full, |request| request.scope);
    let (api_key, key) = new_key(scope);
    let key_id = key.id;
    let created_at = key.created_at;
    let prefix = key.prefix.clone();
    let tenant = change_tenant(&app, &id, &TenantChange::AddKey(key)).await?;
    let body = NewKeyView {
        id: key_id,
        tenant_id: tenant.id,
        api_key,
        prefix,
        created_at: pulsestream_core::format_timestamp(created_at),
        scope,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /admin/tenants/{id}/keys/{key_id}`: the key stops working at once.
#[utoipa::path(
    delete,
    path = "/admin/tenants/{id}/keys/{key_id}",
    operation_id = "revoke_tenant_key",
    tag = "tenants",
    summary = "Revoke an API key",
    description = "The key stops working at once.",
    params(
        ("id" = String, Path, format = "uuid", description = "The tenant's id"),
        ("key_id" = String, Path, format = "uuid", description = "The key's id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 503, response = doc::Unavailable),
    ),
    security(("bearerAuth" = [])),
)]
pub async fn revoke_key(
    _: Admin,
    State(app): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let no_such_key = || ApiError::not_found(format!("tenant {id} has no key {key_id:?}"));
    let key = key_id.parse::<KeyId>().map_err(|_| no_such_key())?;
    change_tenant(&app, &id, &TenantChange::RevokeKey(key)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Applies `change` in the store, atomically against every other change on any node.
async fn change_tenant(
    app: &AppState,
    id: &str,
    change: &TenantChange,
) -> Result<Tenant, ApiError> {
    let not_found = || ApiError::not_found(format!("no tenant with id {id:?}"));
    let tenant_id = id.parse::<TenantId>().map_err(|_| not_found())?;
    match app.tenants.change_tenant(tenant_id, change).await {
        Ok(tenant) => Ok(tenant),
        Err(TenantChangeFailed::NotFound) => Err(not_found()),
        Err(TenantChangeFailed::Rejected(TenantChangeError::NoSuchKey(key))) => Err(
            ApiError::not_found(format!("tenant {id} has no key \"{key}\"")),
        ),
        Err(TenantChangeFailed::Rejected(TenantChangeError::RateLimit(err))) => {
            Err(rate_limit_error(err))
        }
        Err(TenantChangeFailed::Store(err)) => Err(err.into()),
    }
}

async fn find(app: &AppState, id: &str) -> Result<Tenant, ApiError> {
    let not_found = || ApiError::not_found(format!("no tenant with id {id:?}"));
    let id = id.parse::<TenantId>().map_err(|_| not_found())?;
    app.tenants.tenant(id).await?.ok_or_else(not_found)
}

fn check_name(name: String) -> Result<String, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(field_error(
            "name",
            "string_length",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

fn rate_limit(per_minute: u32, burst: Option<u32>) -> Result<RateLimit, ApiError> {
    RateLimit::new(per_minute, burst).map_err(rate_limit_error)
}

fn rate_limit_error(err: RateLimitError) -> ApiError {
    let field = match err {
        RateLimitError::ZeroRate => "rate_limit_per_minute",
        RateLimitError::ZeroBurst => "burst",
    };
    field_error(field, "greater_than_equal", "must be at least 1".into())
}

fn field_error(field: &str, kind: &str, msg: String) -> ApiError {
    ApiError::validation(
        format!("{field} {msg}"),
        vec![ErrorItem {
            loc: vec!["body".into(), field.into()],
            kind: kind.into(),
            msg,
        }],
    )
}

/// Makes a new API key: `ps_` and 32 random bytes in hex. Returns it and what is stored of it.
fn new_key(scope: KeyScope) -> (String, TenantKey) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut api_key = String::from("ps_");
    for byte in bytes {
        api_key.push_str(&format!("{byte:02x}"));
    }
    let key = TenantKey {
        id: KeyId::random(),
        hash: secret_hash(&api_key),
        prefix: api_key[..10].to_owned(),
        created_at: OffsetDateTime::now_utc(),
        scope,
    };
    (api_key, key)
}
