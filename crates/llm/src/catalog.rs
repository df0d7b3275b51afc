//! Model facts Warren needs and providers do not report: context window and prices.
//!
//! There is no allowlist: any model name passes through to the provider. Unknown models get a
//! conservative default; configuration can override any entry.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::Usage;

/// What Warren knows about a model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Context window in tokens.
    pub context_window: u32,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million cached input tokens.
    pub cached_input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
}

/// Used for models the catalog does not know (price unknown: 0).
pub const DEFAULT: ModelInfo = ModelInfo {
    context_window: 128_000,
    input_per_mtok: 0.0,
    cached_input_per_mtok: 0.0,
    output_per_mtok: 0.0,
};

/// Built-in entries, matched by longest prefix of the model name.
const BUILTIN: &[(&str, ModelInfo)] = &[
    (
        "gpt-4o-mini",
        ModelInfo {
            context_window: 128_000,
            input_per_mtok: 0.15,
            cached_input_per_mtok: 0.075,
            output_per_mtok: 0.6,
        },
    ),
    (
        "gpt-4o",
        ModelInfo {
            context_window: 128_000,
            input_per_mtok: 2.5,
            cached_input_per_mtok: 1.25,
            output_per_mtok: 10.0,
        },
    ),
    (
        "gpt-4.1-mini",
        ModelInfo {
            context_window: 1_047_576,
            input_per_mtok: 0.4,
            cached_input_per_mtok: 0.1,
            output_per_mtok: 1.6,
        },
    ),
    (
        "gpt-4.1",
        ModelInfo {
            context_window: 1_047_576,
            input_per_mtok: 2.0,
            cached_input_per_mtok: 0.5,
            output_per_mtok: 8.0,
        },
    ),
    (
        "o4-mini",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 1.1,
            cached_input_per_mtok: 0.275,
            output_per_mtok: 4.4,
        },
    ),
    (
        "o3",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 2.0,
            cached_input_per_mtok: 0.5,
            output_per_mtok: 8.0,
        },
    ),
    (
        "claude-opus-4",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 15.0,
            cached_input_per_mtok: 1.5,
            output_per_mtok: 75.0,
        },
    ),
    (
        "claude-sonnet-4",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 3.0,
            cached_input_per_mtok: 0.3,
            output_per_mtok: 15.0,
        },
    ),
    (
        "claude-3-7-sonnet",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 3.0,
            cached_input_per_mtok: 0.3,
            output_per_mtok: 15.0,
        },
    ),
    (
        "claude-3-5-sonnet",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 3.0,
            cached_input_per_mtok: 0.3,
            output_per_mtok: 15.0,
        },
    ),
    (
        "claude-3-5-haiku",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 0.8,
            cached_input_per_mtok: 0.08,
            output_per_mtok: 4.0,
        },
    ),
    (
        "claude-haiku-4",
        ModelInfo {
            context_window: 200_000,
            input_per_mtok: 1.0,
            cached_input_per_mtok: 0.1,
            output_per_mtok: 5.0,
        },
    ),
    (
        "deepseek-chat",
        ModelInfo {
            context_window: 128_000,
            input_per_mtok: 0.27,
            cached_input_per_mtok: 0.07,
            output_per_mtok: 1.1,
        },
    ),
    (
        "deepseek-reasoner",
        ModelInfo {
            context_window: 128_000,
            input_per_mtok: 0.55,
            cached_input_per_mtok: 0.14,
            output_per_mtok: 2.19,
        },
    ),
];

/// The catalog: built-ins plus configured overrides (exact model names).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    overrides: HashMap<String, ModelInfo>,
}

impl Catalog {
    /// A catalog with these overrides.
    pub fn with_overrides(overrides: HashMap<String, ModelInfo>) -> Self {
        Catalog { overrides }
    }

    /// Facts for `model`: an override, else the longest matching built-in prefix, else [`DEFAULT`].
    pub fn lookup(&self, model: &str) -> ModelInfo {
        if let Some(i) = self.overrides.get(model) {
            return *i;
        }
        // Provider prefixes such as "openai/gpt-4o" (OpenRouter) match on the last segment.
        let name = model.rsplit('/').next().unwrap_or(model);
        BUILTIN
            .iter()
            .filter(|(p, _)| name.starts_with(p))
            .max_by_key(|(p, _)| p.len())
            .map_or(DEFAULT, |(_, i)| *i)
    }

    /// Cost in USD of `usage` on `model`.
    pub fn cost(&self, model: &str, usage: Usage) -> f64 {
        let i = self.lookup(model);
        let uncached = usage.input_tokens.saturating_sub(usage.cached_input_tokens) as f64;
        (uncached * i.input_per_mtok
            + usage.cached_input_tokens as f64 * i.cached_input_per_mtok
            + usage.output_tokens as f64 * i.output_per_mtok)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_overrides_and_default() {
        let c = Catalog::default();
        assert_eq!(c.lookup("gpt-4o-mini-2024-07-18").input_per_mtok, 0.15);
        assert_eq!(c.lookup("gpt-4o-2024-08-06").input_per_mtok, 2.5);
        assert_eq!(
            c.lookup("anthropic/claude-sonnet-4-20250514")
                .context_window,
            200_000
        );
        assert_eq!(c.lookup("my-local-llama"), DEFAULT);
        let c = Catalog::with_overrides(HashMap::from([(
            "my-local-llama".to_string(),
            ModelInfo {
                context_window: 8192,
                ..DEFAULT
            },
        )]));
        assert_eq!(c.lookup("my-local-llama").context_window, 8192);
    }

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let c = Catalog::default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cached_input_tokens: 500_000,
        };
        let cost = c.cost("claude-sonnet-4", u);
        assert!(
            (cost - (0.5 * 3.0 + 0.5 * 0.3 + 15.0)).abs() < 1e-9,
            "{cost}"
        );
    }
}
