//! RabbitMQ's pagination of listings (`rabbit_mgmt_util.erl` `pagination_params`): triggered by the
//! `page` parameter alone (`pagination=false` is ignored); `page_size` (default 100, at most 500),
//! `name` filters by substring, or by regular expression with `use_regex=true`. The answer is
//! `{items, page, page_size, page_count, item_count, filtered_count, total_count}`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;

/// Largest page RabbitMQ serves.
const MAX_PAGE_SIZE: usize = 500;

/// The query parameters of a listing.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Query {
    page: Option<String>,
    page_size: Option<String>,
    name: Option<String>,
    use_regex: Option<String>,
}

fn number(v: &str, what: &str) -> Result<usize, ApiError> {
    v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::bad_request(format!("{what} must be a positive integer, got '{v}'"))
    })
}

/// `items` (each a JSON object with a `name`) as the listing asked for: the plain array without
/// `page`, the paged object with it.
///
/// # Errors
/// 400 for a page, page size or regular expression that is not valid, or a page past the last.
pub(crate) fn respond(items: Vec<Value>, q: &Query) -> Result<Value, ApiError> {
    let Some(page) = &q.page else {
        return Ok(Value::Array(items));
    };
    let page = number(page, "page")?;
    let page_size = match &q.page_size {
        Some(s) => number(s, "page_size")?,
        None => 100,
    };
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "page_size must be at most {MAX_PAGE_SIZE}, got {page_size}"
        )));
    }
    let total = items.len();
    let filtered: Vec<Value> = match q.name.as_deref().filter(|n| !n.is_empty()) {
        None => items,
        Some(pattern) => {
            let by_regex = q.use_regex.as_deref() == Some("true");
            let re = if by_regex {
                Some(regex::Regex::new(pattern).map_err(|e| {
                    ApiError::bad_request(format!("invalid regular expression: {e}"))
                })?)
            } else {
                None
            };
            items
                .into_iter()
                .filter(|item| {
                    let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                    match &re {
                        Some(re) => re.is_match(name),
                        None => name.contains(pattern),
                    }
                })
                .collect()
        }
    };
    let filtered_count = filtered.len();
    let page_count = filtered_count.div_ceil(page_size);
    if page > page_count.max(1) {
        return Err(ApiError::bad_request(format!(
            "page {page} is past the last page ({page_count})"
        )));
    }
    let items: Vec<Value> = filtered
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(json!({
        "filtered_count": filtered_count,
        "item_count": items.len(),
        "items": items,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({ "name": format!("q{i}") })).collect()
    }

    fn query(page: &str, size: &str, name: Option<&str>, regex: bool) -> Query {
        Query {
            page: Some(page.into()),
            page_size: Some(size.into()),
            name: name.map(str::to_owned),
            use_regex: regex.then(|| "true".to_owned()),
        }
    }

    #[test]
    fn without_page_the_plain_list() {
        assert_eq!(
            respond(named(3), &Query::default()).unwrap(),
            Value::Array(named(3))
        );
    }

    #[test]
    fn pages_filters_and_counts() {
        let v = respond(named(25), &query("3", "10", None, false)).unwrap();
        assert_eq!(v["item_count"], 5);
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["total_count"], 25);
        assert_eq!(v["items"][0]["name"], "q20");
        let v = respond(named(25), &query("1", "10", Some("q1"), false)).unwrap();
        assert_eq!(v["filtered_count"], 11, "q1, q10..q19");
        let v = respond(named(25), &query("1", "10", Some("^q2[0-9]$"), true)).unwrap();
        assert_eq!(v["filtered_count"], 5);
        let empty = respond(Vec::new(), &query("1", "10", None, false)).unwrap();
        assert_eq!(
            (empty["page_count"].clone(), empty["item_count"].clone()),
            (json!(0), json!(0))
        );
    }

    #[test]
    fn bad_parameters_are_400() {
        assert!(respond(named(5), &query("0", "10", None, false)).is_err());
        assert!(respond(named(5), &query("2", "10", None, false)).is_err());
        assert!(respond(named(5), &query("1", "501", None, false)).is_err());
        assert!(respond(named(5), &query("1", "10", Some("("), true)).is_err());
    }
}
