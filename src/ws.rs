//! WebSocket codec (being written).
