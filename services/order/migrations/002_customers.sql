-- A local, event-fed copy of the registered customers (UserRegistered): an order for a customer
-- the shop does not know is refused at the edge, before anything is charged.
CREATE TABLE customers (
    user_id       TEXT   PRIMARY KEY,
    registered_at BIGINT NOT NULL
);
