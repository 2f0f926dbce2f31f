#include "config/credentials.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace warp::config {
namespace {

namespace fs = std::filesystem;

class DatabasePasswordTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("warp-credentials-" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "credentials");
    ::unsetenv("CREDENTIALS_DIRECTORY");
  }
  void TearDown() override {
    ::unsetenv("CREDENTIALS_DIRECTORY");
    fs::remove_all(dir_);
  }
  void Write(const fs::path& file, const std::string& text) {
    std::ofstream(file, std::ios::binary) << text;
  }
  fs::path dir_;
};

TEST_F(DatabasePasswordTest, NoFileAndNoCredentialMeansNone) {
  EXPECT_EQ(DatabasePassword(StoreSettings{}, dir_), std::nullopt);
}

TEST_F(DatabasePasswordTest, ARelativePasswordFileIsReadBesideTheConfigWithoutItsNewline) {
  Write(dir_ / "db-password", "s3cret\n");
  StoreSettings store;
  store.password_file = "db-password";
  EXPECT_EQ(DatabasePassword(store, dir_), "s3cret");
}

TEST_F(DatabasePasswordTest, AnUnreadablePasswordFileIsAnErrorNamingTheKey) {
  StoreSettings store;
  store.password_file = dir_ / "missing";
  try {
    (void)DatabasePassword(store, dir_);
    FAIL() << "no error for a missing password file";
  } catch (const PasswordFileError& e) {
    EXPECT_NE(std::string(e.what()).find("store.password_file"), std::string::npos) << e.what();
  }
}

TEST_F(DatabasePasswordTest, TheSystemdCredentialIsUsedWhenNoFileIsConfigured) {
  Write(dir_ / "credentials" / "warp-db-password", "from-systemd\r\n");
  ::setenv("CREDENTIALS_DIRECTORY", (dir_ / "credentials").c_str(), 1);
  EXPECT_EQ(DatabasePassword(StoreSettings{}, dir_), "from-systemd");
}

TEST_F(DatabasePasswordTest, AnEmptyCredentialMeansNone) {
  Write(dir_ / "credentials" / "warp-db-password", "\n");
  ::setenv("CREDENTIALS_DIRECTORY", (dir_ / "credentials").c_str(), 1);
  EXPECT_EQ(DatabasePassword(StoreSettings{}, dir_), std::nullopt);
}

TEST_F(DatabasePasswordTest, TheConfiguredFileWinsOverTheCredential) {
  Write(dir_ / "credentials" / "warp-db-password", "from-systemd");
  Write(dir_ / "file", "from-file");
  ::setenv("CREDENTIALS_DIRECTORY", (dir_ / "credentials").c_str(), 1);
  StoreSettings store;
  store.password_file = dir_ / "file";
  EXPECT_EQ(DatabasePassword(store, dir_), "from-file");
}

}  // namespace
}  // namespace warp::config
