//! What can go wrong setting a method up; running one fails with candle's errors.

/// A method's settings or its fit to a model, named so a driver can say which and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// A setting is out of range or inconsistent; the message names it and the allowed values.
    #[error("{0}")]
    Config(String),
}

impl From<String> for MethodError {
    fn from(message: String) -> Self {
        Self::Config(message)
    }
}

impl From<&str> for MethodError {
    fn from(message: &str) -> Self {
        Self::Config(message.to_string())
    }
}
