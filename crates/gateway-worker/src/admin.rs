//! The operators' JSON: the settings patch body and the shapes of admin replies.

use crate::errors::ApiError;
use protocol::coordinator::{DefaultModelsPatch, SettingsPatch};
use serde::Deserialize;

/// The body of `PATCH /admin/tenant`. Unknown fields are refused so that a
/// typo is a 400, not a silent no-op.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatchBody {
    display_name: Option<String>,
    default_models: Option<DefaultModelsBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultModelsBody {
    chat: Option<String>,
    embedding: Option<String>,
}

impl SettingsPatchBody {
    /// The validated protocol patch.
    pub fn into_patch(self) -> Result<SettingsPatch, ApiError> {
        let patch = SettingsPatch {
            display_name: self.display_name,
            default_models: self.default_models.map(|m| DefaultModelsPatch {
                chat: m.chat,
                embedding: m.embedding,
            }),
        };
        patch
            .validate()
            .map_err(|e| ApiError::bad_request("invalid_settings", e.to_string()))?;
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SettingsPatch, ApiError> {
        serde_json::from_str::<SettingsPatchBody>(json)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .into_patch()
    }

    #[test]
    fn patches() {
        let p = parse(r#"{"displayName":"Acme","defaultModels":{"chat":"@cf/x/y"}}"#).unwrap();
        assert_eq!(p.display_name.as_deref(), Some("Acme"));
        assert_eq!(p.default_models.unwrap().chat.as_deref(), Some("@cf/x/y"));
        for bad in [
            r#"{}"#,
            r#"{"displayname":"x"}"#,
            r#"{"displayName":""}"#,
            r#"{"displayName":5}"#,
            r#"{"defaultModels":{"chat":"a b"}}"#,
            r#"{"defaultModels":{"vision":"x"}}"#,
            r#"[]"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().status(), 400, "{bad}");
        }
    }
}
