//! Closed sets of words that travel as JSON strings (steps, triggers,
//! statuses): one declaration gives the enum, its wire spelling (serde and
//! [`as_str`](crate::plan::Step::as_str) from the same literal, so they
//! cannot disagree), the list of every value in declaration order, parsing
//! and `Display`. The JSON Schemas list the allowed values.

/// A word outside one of these sets: what a reader sees when a log, a row
/// or a request holds a value this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {kind} (one of {expected})")]
pub struct UnknownValue {
    /// What was expected, e.g. `step`.
    pub kind: &'static str,
    pub value: String,
    /// The known values, comma-separated.
    pub expected: String,
}

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident as $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        pub enum $ty {
            $( $(#[$vmeta])* #[serde(rename = $name)] $variant, )+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The wire spelling, as in JSON.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::wire_enum::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::wire_enum::UnknownValue {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: [$($name),+].join(", "),
                    }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
