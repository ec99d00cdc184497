//! `TaskerCore::Types::SimpleStepMessage` decoded in Rust: `receive_messages(as:
//! SimpleStepMessage)` parses each payload here with serde and builds the frozen Ruby object
//! directly, instead of `JSON.parse` into a Hash, three regexp checks and `new` in Ruby (about
//! half of the typed loop's time per message). The checks and error texts are the Ruby ones
//! (`SimpleStepMessage.from_hash`): every field a UUID in its hyphenated form, either case,
//! kept in lower case; other fields ignored.

use std::borrow::Cow;

use magnus::{prelude::*, Error, RClass, RObject, Ruby, Value};
use serde::Deserialize;

use crate::errors::serialization_error;
use crate::message::RbReceivedMessage;

const FIELDS: [&str; 3] = ["task_uuid", "step_uuid", "correlation_id"];

/// The usual payload: three string fields (borrowed unless escaped).
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    task_uuid: Cow<'a, str>,
    #[serde(borrow)]
    step_uuid: Cow<'a, str>,
    #[serde(borrow)]
    correlation_id: Cow<'a, str>,
}

/// A UUID's hyphenated text (36 characters, hex in either case) in lower case, or None.
fn canonical_uuid(text: &str) -> Option<Cow<'_, str>> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut lower = true;
    for (i, b) in bytes.iter().enumerate() {
        match i {
            8 | 13 | 18 | 23 if *b == b'-' => {}
            8 | 13 | 18 | 23 => return None,
            _ if b.is_ascii_digit() || (b'a'..=b'f').contains(b) => {}
            _ if (b'A'..=b'F').contains(b) => lower = false,
            _ => return None,
        }
    }
    Some(if lower {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.to_ascii_lowercase())
    })
}

/// The three fields in lower case, or the error text `from_hash` would raise.
fn decode(payload: &[u8]) -> Result<[String; 3], String> {
    let fail = |what: &str| format!("decoding of SimpleStepMessage failed: {what}");
    let texts: [Cow<'_, str>; 3] = match serde_json::from_slice::<Wire<'_>>(payload) {
        Ok(w) => [w.task_uuid, w.step_uuid, w.correlation_id],
        // Not the usual shape: decode generically for the precise reason (or a payload the
        // struct refused for a reason that does not matter, such as a repeated key).
        Err(_) => match serde_json::from_slice::<serde_json::Value>(payload) {
            Err(e) => {
                let mut detail = e.to_string();
                if detail.len() > 120 {
                    let mut end = 120;
                    while !detail.is_char_boundary(end) {
                        end -= 1;
                    }
                    detail.truncate(end);
                    detail.push_str("...");
                }
                return Err(format!("decoding of JSON failed: {detail}"));
            }
            Ok(serde_json::Value::Object(map)) => {
                let mut texts: [Cow<'_, str>; 3] = Default::default();
                for (slot, field) in texts.iter_mut().zip(FIELDS) {
                    match map.get(field) {
                        Some(serde_json::Value::String(s)) => *slot = Cow::Owned(s.clone()),
                        _ => return Err(fail(&format!("{field} is not a UUID"))),
                    }
                }
                texts
            }
            Ok(_) => return Err(fail("not an object")),
        },
    };
    let mut out: [String; 3] = Default::default();
    for ((slot, text), field) in out.iter_mut().zip(&texts).zip(FIELDS) {
        *slot = canonical_uuid(text)
            .ok_or_else(|| fail(&format!("{field} is not a UUID")))?
            .into_owned();
    }
    Ok(out)
}

impl RbReceivedMessage {
    /// `message.decode_step_message(SimpleStepMessage)`: the payload as a frozen instance of
    /// `class` (its instance variables set as `initialize` would, without calling it), or
    /// `SerializationError`.
    fn decode_step_message(ruby: &Ruby, rb_self: &Self, class: RClass) -> Result<Value, Error> {
        let fields = decode(&rb_self.message.payload).map_err(|m| serialization_error(ruby, m))?;
        let object = RObject::from_value(class.obj_alloc()?)
            .ok_or_else(|| serialization_error(ruby, "not a plain Ruby class".into()))?;
        for (field, text) in FIELDS.iter().zip(fields) {
            let value = ruby.str_new(&text);
            value.freeze();
            object.ivar_set(format!("@{field}").as_str(), value)?;
        }
        object.freeze();
        Ok(object.as_value())
    }
}

pub fn define(ruby: &Ruby) -> Result<(), Error> {
    use magnus::method;
    let class: RClass = ruby
        .class_object()
        .const_get::<_, magnus::RModule>("TaskerCore")?
        .const_get::<_, magnus::RModule>("Messaging")?
        .const_get("ReceivedMessage")?;
    class.define_method(
        "decode_step_message",
        method!(RbReceivedMessage::decode_step_message, 1),
    )?;
    Ok(())
}
