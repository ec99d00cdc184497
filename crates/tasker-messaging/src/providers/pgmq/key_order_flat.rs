//! The fast path of `key_order.rs`: flat objects.
//!
//! Most payloads are flat objects of plain scalars (the orchestrator's messages are three
//! UUID strings). For those the text can be rearranged without building a document: with no
//! escapes in any string, no nesting and only integers that serde prints back digit for
//! digit, serde's compact rendering is the text itself, and jsonb's text differs from it only
//! by the separators and the key order. Anything else takes the general path (`key_order.rs`); its tests
//! check that both paths agree.

/// At most this many members take the fast path (fixed arrays, no allocation).
pub(super) const FLAT_MAX: usize = 32;

/// A member of a flat object, as slices of the text: the key without its quotes, the value
/// as written.
#[derive(Clone, Copy, Default)]
pub(super) struct Member<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a str,
}

/// Scans `{"key"<colon>value<comma>...}` where every key and string value has no escape and
/// no control character, and every other value is `true`, `false`, `null` or an integer of
/// at most 18 digits (no leading zero, no `-0`). The number of members, or `None` for
/// anything else.
pub(super) fn scan_flat<'a>(
    text: &'a str,
    colon: &str,
    comma: &str,
    out: &mut [Member<'a>; FLAT_MAX],
) -> Option<usize> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut i = 1;
    if b.get(i) == Some(&b'}') {
        return (b.len() == 2).then_some(0);
    }
    let mut n = 0;
    loop {
        if n == FLAT_MAX {
            return None;
        }
        let key_end = scan_plain_string(b, i)?;
        let key = text.get(i + 1..key_end - 1)?;
        i = key_end;
        if !b[i..].starts_with(colon.as_bytes()) {
            return None;
        }
        i += colon.len();
        let value_end = scan_scalar(b, i)?;
        out[n] = Member {
            key,
            value: text.get(i..value_end)?,
        };
        n += 1;
        i = value_end;
        if b.get(i) == Some(&b'}') {
            return (i + 1 == b.len()).then_some(n);
        }
        if !b[i..].starts_with(comma.as_bytes()) {
            return None;
        }
        i += comma.len();
    }
}

/// End (after the closing quote) of a string starting at `start` with no escapes.
fn scan_plain_string(b: &[u8], start: usize) -> Option<usize> {
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let rest = b.get(start + 1..)?;
    let close = rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (rest[close] == b'"').then_some(start + 1 + close + 1)
}

fn scan_scalar(b: &[u8], start: usize) -> Option<usize> {
    let rest = b.get(start..)?;
    match rest.first()? {
        b'"' => scan_plain_string(b, start),
        b't' => rest.starts_with(b"true").then_some(start + 4),
        b'f' => rest.starts_with(b"false").then_some(start + 5),
        b'n' => rest.starts_with(b"null").then_some(start + 4),
        _ => {
            let negative = rest[0] == b'-';
            let digits = &rest[usize::from(negative)..];
            let len = digits.iter().take_while(|c| c.is_ascii_digit()).count();
            let leading_zero = digits.first() == Some(&b'0') && (len > 1 || negative);
            if len == 0 || len > 18 || leading_zero {
                return None;
            }
            Some(start + usize::from(negative) + len)
        }
    }
}

/// The key order of a flat object, as the general path would write it; `None` (keep a
/// copy) for duplicate keys.
pub(super) fn flat_key_order(members: &[Member<'_>]) -> Option<String> {
    let n = members.len();
    let mut order = [0usize; FLAT_MAX];
    for (i, slot) in order[..n].iter_mut().enumerate() {
        *slot = i;
    }
    let order = &mut order[..n];
    order.sort_unstable_by(|&a, &b| {
        let (ka, kb) = (members[a].key.as_bytes(), members[b].key.as_bytes());
        ka.len().cmp(&kb.len()).then_with(|| ka.cmp(kb))
    });
    if order
        .windows(2)
        .any(|w| members[w[0]].key == members[w[1]].key)
    {
        return None;
    }
    if order.iter().enumerate().all(|(i, &j)| i == j) {
        return Some("[]".to_owned());
    }
    let mut perm = [0usize; FLAT_MAX];
    for (sorted_pos, &doc_pos) in order.iter().enumerate() {
        perm[doc_pos] = sorted_pos;
    }
    let mut out = String::with_capacity(4 + 3 * n);
    out.push_str("[[");
    for (i, p) in perm[..n].iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Below FLAT_MAX: one or two digits.
        if *p >= 10 {
            out.push(char::from(b'0' + (*p / 10) as u8));
        }
        out.push(char::from(b'0' + (*p % 10) as u8));
    }
    out.push_str("]]");
    Some(out)
}

/// A single permutation of `n` as the key order writes it (`[]` is the identity).
fn parse_flat_perm(key_order: Option<&str>, n: usize, perm: &mut [usize; FLAT_MAX]) -> Option<()> {
    let order = key_order.unwrap_or("[]");
    if order == "[]" {
        for (i, slot) in perm[..n].iter_mut().enumerate() {
            *slot = i;
        }
        return Some(());
    }
    let inner = order.strip_prefix("[[")?.strip_suffix("]]")?;
    let mut seen = [false; FLAT_MAX];
    let mut count = 0;
    for part in inner.split(',') {
        let j: usize = part.parse().ok()?;
        if count == n || j >= n || seen[j] {
            return None;
        }
        seen[j] = true;
        perm[count] = j;
        count += 1;
    }
    (count == n).then_some(())
}

/// Compact bytes of a flat object from jsonb's text, or `None` to take the general path
/// (which also reports a key order that does not fit).
pub(super) fn rebuild_flat(jsonb_text: &str, key_order: Option<&str>) -> Option<Vec<u8>> {
    let mut members = [Member::default(); FLAT_MAX];
    let n = scan_flat(jsonb_text, ": ", ", ", &mut members)?;
    let mut perm = [0usize; FLAT_MAX];
    parse_flat_perm(key_order, n, &mut perm)?;
    let mut out = Vec::with_capacity(jsonb_text.len());
    out.push(b'{');
    for (i, &j) in perm[..n].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let m = &members[j];
        out.push(b'"');
        out.extend_from_slice(m.key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(m.value.as_bytes());
    }
    out.push(b'}');
    Some(out)
}
