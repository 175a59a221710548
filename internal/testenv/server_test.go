package testenv

import (
	"context"
	"testing"
	"time"
)

func TestStartRedisKeepsAcknowledgedWritesAcrossAKillWithAppendOnly(t *testing.T) {
	r := StartRedis(t, RedisConfig{AppendOnly: true, Args: []string{"--appendfsync", "always"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := r.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Kill(t)
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered by a killed server")
	}
	r.Restart(t)
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("after restart: %q, %v; want v", got, err)
	}
}
