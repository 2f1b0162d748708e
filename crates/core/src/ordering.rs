//! A webhook's delivery order: `unordered` (attempts run concurrently; the default) or `fifo`
//! (one delivery at a time, in the order the events were accepted).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrder {
    #[default]
    Unordered,
    Fifo,
}

impl DeliveryOrder {
    pub const ALL: [DeliveryOrder; 2] = [DeliveryOrder::Unordered, DeliveryOrder::Fifo];

    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryOrder::Unordered => "unordered",
            DeliveryOrder::Fifo => "fifo",
        }
    }

    /// The order named `text` (as [`DeliveryOrder::as_str`] writes it), if any.
    pub fn from_name(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryOrder;

    #[test]
    fn each_order_reads_back_from_its_name_and_as_json() {
        for order in DeliveryOrder::ALL {
            assert_eq!(DeliveryOrder::from_name(order.as_str()), Some(order));
            let json = serde_json::to_value(order).unwrap();
            assert_eq!(json, order.as_str());
        }
        assert_eq!(DeliveryOrder::from_name("FIFO"), None);
    }
}
